"""Webhooks: phase changes reach a real HTTP endpoint, with retries and backoff when it fails."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from controller.webhooks import WebhookNotifier, payload
from tests.integration.controller_world import World, make_world

pytestmark = pytest.mark.timeout(60)


class Hook:
    """A loopback HTTP endpoint that answers 503 to the first `failures` posts, then 200."""

    def __init__(self, failures: int = 0, status: int = 503) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.attempts = 0
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                hook.attempts += 1
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                code = status if hook.attempts <= failures else 200
                if code == 200:
                    hook.bodies.append(body)
                self.send_response(code)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def hook() -> Iterator[Hook]:
    h = Hook(failures=2)
    yield h
    h.close()


def test_delivery_retries_with_backoff_until_the_endpoint_answers(hook: Hook) -> None:
    notifier = WebhookNotifier(hook.url, attempts=4, backoff_s=0.01)
    notifier.notify(payload("rolled_back", "rollout 3 rolled back", {"id": 3}))
    assert notifier.flush(10)
    notifier.close()
    assert hook.attempts == 3 and notifier.sent == 1 and notifier.failed == 0
    assert hook.bodies[0]["text"] == "[modelroll] rollout 3 rolled back"  # what Slack-compatible hooks show
    assert hook.bodies[0]["kind"] == "rolled_back" and hook.bodies[0]["rollout"] == {"id": 3}


def test_gives_up_and_counts_after_the_last_attempt() -> None:
    h = Hook(failures=100)
    try:
        notifier = WebhookNotifier(h.url, attempts=3, backoff_s=0.01)
        notifier.notify(payload("x", "y", {}))
        assert notifier.flush(10)
        notifier.close()
        assert h.attempts == 3 and notifier.failed == 1 and notifier.sent == 0
    finally:
        h.close()


def test_a_4xx_is_not_retried() -> None:
    h = Hook(failures=100, status=404)
    try:
        notifier = WebhookNotifier(h.url, attempts=5, backoff_s=0.01)
        notifier.notify(payload("x", "y", {}))
        assert notifier.flush(10)
        notifier.close()
        assert h.attempts == 1 and notifier.failed == 1
    finally:
        h.close()


@pytest.fixture()
def world(pg_url: str, redis_url: str, redis_prefix: str) -> Iterator[World]:
    yield from make_world(pg_url, redis_url, redis_prefix)


def test_phase_changes_by_hand_and_by_the_controller_are_notified(world: World, hook: Hook) -> None:
    notifier = WebhookNotifier(hook.url, backoff_s=0.01)
    with world.client(notifier=notifier) as client:
        r = client.post("/v1/rollouts", headers=world.auth("operator"),
                        json={"model": "digits", "baseline": "fp32", "candidate": "int8"})
        rid = r.json()["id"]
        rec = world.reconciler(notifier=notifier)
        rec.elector.poll()
        rec.tick()
        r = client.post(f"/v1/rollouts/{rid}/abort", headers={**world.auth("operator"), "If-Match": '"2"'},
                        json={"reason": "wrong candidate"})
        assert r.status_code == 200
    assert notifier.flush(10)
    notifier.close()
    kinds = [b["kind"] for b in hook.bodies]
    assert kinds == ["started", "aborted"]
    assert "wrong candidate" in hook.bodies[1]["text"] and hook.bodies[1]["rollout"]["phase"] == "aborted"
