"""Webhooks: phase changes reach a real HTTP endpoint through the outbox in PostgreSQL, with retries and backoff
when it fails, once each across controllers, and after the controller that decided them stopped."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import select

from controller.webhooks import WebhookNotifier, outbox_counts
from modelroll.db import WebhookOutboxRow
from tests.integration.controller_world import World

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


def _enqueue(world: World, notifier: WebhookNotifier, kind: str, text: str, rollout: dict[str, Any]) -> None:
    with world.session_factory() as session, session.begin():
        notifier.enqueue(session, kind, text, rollout)
    notifier.wake()


def _outbox(world: World) -> list[WebhookOutboxRow]:
    with world.session_factory() as session:
        return list(session.scalars(select(WebhookOutboxRow).order_by(WebhookOutboxRow.id)))


def test_delivery_retries_with_backoff_until_the_endpoint_answers(world: World, hook: Hook) -> None:
    notifier = WebhookNotifier(hook.url, world.session_factory, attempts=4, backoff_s=0.01)
    _enqueue(world, notifier, "rolled_back", "rollout 3 rolled back", {"phase": "rolled_back"})
    assert notifier.flush(10)
    notifier.close()
    assert hook.attempts == 3 and notifier.sent == 1 and notifier.failed == 0
    body = hook.bodies[0]
    assert body["text"] == "[modelroll] rollout 3 rolled back"  # what Slack-compatible hooks show
    assert body["kind"] == "rolled_back" and body["rollout"] == {"phase": "rolled_back"}
    (row,) = _outbox(world)
    assert body["delivery_id"] == row.id  # the receiver's key to drop a repeated delivery
    assert row.delivered_at is not None and row.attempts == 3 and row.last_error == "status 503"


def test_gives_up_and_counts_after_the_last_attempt(world: World) -> None:
    h = Hook(failures=100)
    try:
        notifier = WebhookNotifier(h.url, world.session_factory, attempts=3, backoff_s=0.01)
        _enqueue(world, notifier, "x", "y", {})
        assert notifier.flush(10)
        notifier.close()
        assert h.attempts == 3 and notifier.failed == 1 and notifier.sent == 0
        (row,) = _outbox(world)
        assert row.failed_at is not None and row.delivered_at is None and row.last_error == "status 503"
        with world.session_factory() as session:
            assert outbox_counts(session) == {"waiting": 0, "failed": 1}  # what /metrics exports
    finally:
        h.close()


def test_a_4xx_is_not_retried(world: World) -> None:
    h = Hook(failures=100, status=404)
    try:
        notifier = WebhookNotifier(h.url, world.session_factory, attempts=5, backoff_s=0.01)
        _enqueue(world, notifier, "x", "y", {})
        assert notifier.flush(10)
        notifier.close()
        assert h.attempts == 1 and notifier.failed == 1
    finally:
        h.close()


def test_a_notification_outlives_the_controller_that_decided_it(world: World, hook: Hook) -> None:
    """Written with the transition, it is delivered by the next controller when the first stopped before sending."""
    stopped = WebhookNotifier(hook.url, world.session_factory)
    stopped.close()  # this controller's sender is gone by the time its decision commits (a crash, a restart)
    with world.session_factory() as session, session.begin():
        stopped.enqueue(session, "rolled_back", "rollout 7 rolled back", {"phase": "rolled_back"})
    assert stopped.pending() == 1 and hook.bodies == []
    successor = WebhookNotifier(hook.url, world.session_factory, backoff_s=0.01)
    assert successor.flush(10)
    successor.close()
    assert [b["kind"] for b in hook.bodies] == ["rolled_back"]


def test_two_controllers_deliver_each_notification_once(world: World) -> None:
    h = Hook()
    try:
        senders = [WebhookNotifier(h.url, world.session_factory, poll_s=0.01) for _ in range(2)]
        with world.session_factory() as session, session.begin():
            for i in range(30):
                senders[0].enqueue(session, "step", f"step {i}", {"step": i})
        for sender in senders:
            sender.wake()
        assert senders[0].flush(20)
        for sender in senders:
            sender.close()
        assert sorted(b["rollout"]["step"] for b in h.bodies) == list(range(30))
        assert sum(s.sent for s in senders) == 30
    finally:
        h.close()


def test_phase_changes_by_hand_and_by_the_controller_are_notified(world: World, hook: Hook) -> None:
    # The hook refuses the first two posts: "started" is retried, and "aborted" waits for it (decision order).
    notifier = WebhookNotifier(hook.url, world.session_factory, backoff_s=0.01)
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
        metrics = client.get("/metrics").text
        assert 'modelroll_webhook_outbox{state="waiting"} 0.0' in metrics
        assert 'modelroll_webhook_outbox{state="failed"} 0.0' in metrics
        assert 'modelroll_webhook_deliveries_total{outcome="sent"} 2.0' in metrics
    notifier.close()
    kinds = [b["kind"] for b in hook.bodies]
    assert kinds == ["started", "aborted"]
    assert "wrong candidate" in hook.bodies[1]["text"] and hook.bodies[1]["rollout"]["phase"] == "aborted"
    assert [row.rollout_id for row in _outbox(world)] == [rid, rid]


def test_a_notification_behind_a_retry_waits_without_spinning_the_sender(world: World) -> None:
    h = Hook(failures=100)
    try:
        with world.client() as client:
            rid = client.post("/v1/rollouts", headers=world.auth("operator"),
                              json={"model": "digits", "baseline": "fp32", "candidate": "int8"}).json()["id"]
        notifier = WebhookNotifier(h.url, world.session_factory, attempts=2, backoff_s=1.0)
        tries: list[int] = []
        deliver = notifier.deliver_due

        def counted() -> int:
            tries.append(deliver())
            return tries[-1]

        notifier.deliver_due = counted  # type: ignore[method-assign]
        with world.session_factory() as session, session.begin():
            notifier.enqueue(session, "started", "first", {"id": rid})
            notifier.enqueue(session, "aborted", "second", {"id": rid})
        notifier.wake()
        time.sleep(0.5)
        assert h.attempts == 1  # the first failed and retries in 1 s; the second waits behind it
        assert len(tries) < 10  # asleep until the retry is due, not polling the outbox in a loop
        assert notifier.flush(10)
        notifier.close()
        assert h.attempts == 4 and notifier.failed == 2  # both tried twice, in order, then given up
    finally:
        h.close()
