"""Approval steps end to end on PostgreSQL + Redis: the rollout of examples/rollout-approval.yaml waits once its
approval step passes, says so on the page and in a webhook with the page's link, and an operator's approval (API with
If-Match, or the page's button) with a reason, audited, lets it go on; approving what does not wait is 409."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from controller.reconcile import Reconciler
from controller.webhooks import WebhookNotifier
from modelroll.db import AuditEntryRow, RolloutEventRow, RolloutRow, WebhookOutboxRow
from tests.integration.controller_world import World, good_samples, make_world

pytestmark = pytest.mark.timeout(120)

APPROVAL = (Path(__file__).resolve().parents[2] / "examples" / "rollout-approval.yaml").read_text()
QUICK = """apiVersion: modelroll/v1
kind: Rollout
metadata: {name: quick}
spec:
  model: digits
  candidate: int8
  steps:
    - {weight_pct: 0, shadow: true, min_duration_s: 0, min_samples: 100, approval: true, timeout_s: 600}
    - {weight_pct: 100, min_duration_s: 0, min_samples: 100}
"""


@pytest.fixture()
def world(pg_url: str, redis_url: str, redis_prefix: str) -> Iterator[World]:
    yield from make_world(pg_url, redis_url, redis_prefix, public_url="https://rollouts.example.com/")


@pytest.fixture()
def notifier(world: World) -> Iterator[WebhookNotifier]:
    # An endpoint nothing listens on: the outbox rows (what would be posted) are what the test reads.
    hooks = WebhookNotifier("http://127.0.0.1:9/hook", world.session_factory, attempts=1, poll_s=60,
                            pages_url=world.settings.status_page_url)
    yield hooks
    hooks.close(timeout_s=0.1)


def applied(world: World, text: str) -> dict[str, Any]:
    with world.client() as client:
        r = client.post("/v1/apply", content=text.encode(), headers={**world.auth("operator"),
                                                                    "Content-Type": "application/yaml"})
        assert r.status_code == 200, r.text
        return r.json()["results"][0]["rollout"]  # type: ignore[no-any-return]


def phase(world: World, rollout_id: int) -> str:
    with world.session_factory() as s:
        return s.get(RolloutRow, rollout_id).phase  # type: ignore[union-attr]


def leader(world: World, notifier: WebhookNotifier | None = None) -> Reconciler:
    rec = world.reconciler(notifier=notifier)
    assert rec.elector.poll() is not None
    return rec


def to_waiting(world: World, rec: Reconciler, rollout_id: int) -> None:
    """Through the example's shadow and 5 % steps to its 25 % approval step, whose criteria pass."""
    rec.tick()
    t = world.clock.now.timestamp()
    world.channel.append_samples(good_samples(rollout_id, 0, 1500, t, shadow=True))
    world.clock.advance(61)
    rec.tick()
    assert phase(world, rollout_id) == "progressing"
    world.channel.append_samples(good_samples(rollout_id, 1, 300, t + 100, shadow=False))
    world.clock.advance(61)
    rec.tick()
    with world.session_factory() as s:
        assert s.get(RolloutRow, rollout_id).step_index == 2  # type: ignore[union-attr]
    world.channel.append_samples(good_samples(rollout_id, 2, 600, t + 200, shadow=False))
    rec.tick()
    assert phase(world, rollout_id) == "progressing"  # passing, but the step's 120 s have not passed
    world.clock.advance(121)
    rec.tick()


def command(client: TestClient, world: World, rollout_id: int, verb: str, body: dict[str, Any],
            role: str = "operator", version: int | None = None) -> Any:
    if version is None:
        version = client.get(f"/v1/rollouts/{rollout_id}", headers=world.auth("viewer")).json()["version"]
    return client.post(f"/v1/rollouts/{rollout_id}/{verb}", json=body,
                       headers={**world.auth(role), "If-Match": f'"{version}"'})


def test_an_approval_step_waits_notifies_and_an_operator_approval_goes_on(
        world: World, notifier: WebhookNotifier) -> None:
    rid = applied(world, APPROVAL)["id"]
    rec = leader(world, notifier)
    to_waiting(world, rec, rid)
    assert phase(world, rid) == "waiting_approval"
    assert dict(world.channel.get_splits()["digits"].weights) == {"fp32": 75.0, "int8": 25.0}  # it holds its step
    with world.client() as client:
        rollout = client.get(f"/v1/rollouts/{rid}", headers=world.auth("viewer")).json()
        assert rollout["approval"]["waiting"] and rollout["approval"]["timeout_s"] == 86400
        assert rollout["approval"]["on_timeout"] == "rollback" and rollout["approval"]["times_out_at"]
        assert "waiting for approval at step 3 of 4: 25 %" in rollout["reason"]
        with world.session_factory() as s:
            [row] = s.scalars(select(WebhookOutboxRow).where(WebhookOutboxRow.kind == "approval_needed")).all()
            assert row.body["url"] == f"https://rollouts.example.com/rollouts/{rid}"
            assert f"approve on the rollout's page: https://rollouts.example.com/rollouts/{rid}" in row.body["text"]
            kinds = list(s.scalars(select(WebhookOutboxRow.kind).order_by(WebhookOutboxRow.id)))
            assert kinds == ["approval_needed"]  # the document's events: no "started", no "advanced"

        r = client.post(f"/v1/rollouts/{rid}/approve", json={"reason": "ok"}, headers=world.auth("operator"))
        assert r.status_code == 428
        r = command(client, world, rid, "approve", {"reason": "ok"}, version=rollout["version"] - 1)
        assert r.status_code == 409 and "changed since you read it" in r.json()["error"]
        assert command(client, world, rid, "approve", {}).status_code == 400  # a reason is required
        assert command(client, world, rid, "approve", {"reason": "ok"}, role="viewer").status_code == 403
        r = command(client, world, rid, "approve", {"reason": "dashboards look fine"})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["phase"] == "progressing" and out["step_index"] == 3 and not out["approval"]["waiting"]
        again = command(client, world, rid, "approve", {"reason": "twice"})
        assert again.status_code == 409
        assert again.json()["error"] == (f"cannot approve rollout {rid}: it is progressing; approve applies to "
                                         "rollouts waiting for approval")
    with world.session_factory() as s:
        event = s.scalars(select(RolloutEventRow).where(RolloutEventRow.rollout_id == rid)
                          .order_by(RolloutEventRow.seq.desc())).first()
        assert event is not None and event.kind == "approved" and event.actor == "token:operator-1"
        assert "approved by token:operator-1: dashboards look fine" in event.reason
        audit = s.scalars(select(AuditEntryRow).where(AuditEntryRow.action == "rollout.approve")).one()
        assert audit.before["phase"] == "waiting_approval" and audit.after["phase"] == "progressing"
        assert "dashboards look fine" in audit.after["reason"]
    assert dict(world.channel.get_splits()["digits"].weights) == {"fp32": 0.0, "int8": 100.0}
    world.channel.append_samples(good_samples(rid, 3, 600, world.clock.now.timestamp() + 300, shadow=False,
                                              baseline=False))
    # The approval was stamped by the API's own clock; the test's clock must pass the step's 120 s after it.
    world.clock.now = max(world.clock.now, datetime.now(UTC)) + timedelta(seconds=121)
    rec.tick()
    assert phase(world, rid) == "promoted"


def test_the_page_shows_the_wait_with_the_evidence_and_approves_with_a_reason(world: World) -> None:
    rid = applied(world, QUICK)["id"]
    rec = leader(world)
    rec.tick()
    world.channel.append_samples(good_samples(rid, 0, 1500, world.clock.now.timestamp(), shadow=True))
    rec.tick()
    assert phase(world, rid) == "waiting_approval"
    with world.client() as client:
        client.post("/login", data={"token": world.tokens["viewer"], "next": "/"})
        page = client.get(f"/rollouts/{rid}").text
        assert "Waiting for approval" in page and "without an approval it rolls back in" in page
        assert 'data-criterion="latency_p50"' in page  # the evidence so far, beside the wait
        assert "/actions/approve" not in page and "modelroll rollout approve" in page
        assert "shadow · approval" in page  # the timeline marks the approval step
        client.post("/login", data={"token": world.tokens["operator"], "next": "/"})
        page = client.get(f"/rollouts/{rid}").text
        actions = set(re.findall(rf"/rollouts/{rid}/actions/(\w+)", page))
        assert actions == {"approve", "pause", "set_weight", "abort"}
        version = int(re.search(r'name="version" value="(\d+)"', page).group(1))  # type: ignore[union-attr]
        r = client.post(f"/rollouts/{rid}/actions/approve", data={"version": version, "reason": " "},
                        follow_redirects=False)
        assert r.status_code == 303 and "an%20approval%20needs%20a%20reason" in r.headers["location"]
        r = client.post(f"/rollouts/{rid}/actions/approve", data={"version": version, "reason": "looked at it"},
                        follow_redirects=False)
        assert r.status_code == 303 and "done=approve" in r.headers["location"], r.headers["location"]
    assert phase(world, rid) == "progressing"


def test_an_approval_that_does_not_come_in_time_rolls_back(world: World) -> None:
    rid = applied(world, QUICK)["id"]
    rec = leader(world)
    rec.tick()
    world.channel.append_samples(good_samples(rid, 0, 1500, world.clock.now.timestamp(), shadow=True))
    rec.tick()
    assert phase(world, rid) == "waiting_approval"
    world.clock.advance(601)
    rec.tick()
    assert phase(world, rid) == "rolled_back"
    with world.session_factory() as s:
        row = s.get(RolloutRow, rid)
        assert row is not None and "no approval at step 1 of 2: shadow (0 % served, mirrored) within 600 s " \
                                   "(on_timeout: rollback)" in row.last_reason
