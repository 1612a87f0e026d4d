"""Retiring through the ops API on PostgreSQL + Redis (roles, 4xx with a message, audit), and the leader's gc."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from controller.housekeeping import Housekeeping
from modelroll.db import ArtifactRow, SampleWindowRow
from tests.integration.controller_world import World, start_rollout

pytestmark = pytest.mark.timeout(120)

RETIRE = "/v1/models/digits/variants/{}/retire"


def test_an_operator_retires_a_candidate_once_and_it_is_audited(client: TestClient, world: World) -> None:
    r = client.post(RETIRE.format("int8"), headers=world.auth("operator"), json={"reason": "slower than int4"})
    assert r.status_code == 200, r.text
    assert r.json()["already_retired"] is False and r.json()["variant"] == "int8"
    again = client.post(RETIRE.format("int8"), headers=world.auth("operator"))
    assert again.status_code == 200 and again.json()["already_retired"] is True
    assert again.json()["retired_at"] == r.json()["retired_at"]
    [entry] = client.get("/v1/audit", headers=world.auth("operator"),
                         params={"target_kind": "variant"}).json()["entries"]
    assert (entry["actor"], entry["action"]) == ("token:operator-1", "variant.retire")
    assert entry["target_id"] == "digits/int8"
    assert entry["after"]["reason"] == "slower than int4"


def test_retired_variants_are_listed_only_when_asked(client: TestClient, world: World) -> None:
    client.post(RETIRE.format("int8"), headers=world.auth("operator"))
    listed = client.get("/v1/models/digits/variants", headers=world.auth("viewer")).json()["variants"]
    assert [v["name"] for v in listed] == ["fp32"]
    every = client.get("/v1/models/digits/variants", headers=world.auth("viewer"),
                       params={"include_retired": "true"}).json()["variants"]
    assert [(v["name"], v["retired_at"] is not None) for v in every] == [("fp32", False), ("int8", True)]
    assert client.get("/v1/models/digits", headers=world.auth("viewer")).json()["variants"][0]["name"] == "fp32"
    assert client.get("/v1/models", headers=world.auth("viewer")).json()["models"][0]["variants"] == ["fp32"]


def test_a_retired_candidate_cannot_be_rolled_out(client: TestClient, world: World) -> None:
    client.post(RETIRE.format("int8"), headers=world.auth("operator"))
    r = client.post("/v1/rollouts", headers=world.auth("operator"), json={"model": "digits", "candidate": "int8"})
    assert r.status_code == 409 and "retired" in r.json()["error"]


def test_what_serves_and_the_arms_of_a_running_rollout_are_refused(client: TestClient, world: World) -> None:
    r = client.post(RETIRE.format("fp32"), headers=world.auth("admin"))
    assert r.status_code == 409
    assert "'fp32' serves model 'digits' in production (revision 1): make another variant serve" in r.json()["error"]
    rollout_id = start_rollout(world)
    r = client.post(RETIRE.format("int8"), headers=world.auth("operator"))
    assert r.status_code == 409
    assert f"is the candidate of rollout {rollout_id}, which is shadow: abort it" in r.json()["error"]


@pytest.mark.parametrize(("path", "body", "status", "message"), [
    ("/v1/models/digits/variants/int9/retire", None, 404, "has no variant 'int9': its variants are fp32, int8"),
    ("/v1/models/digitz/variants/int8/retire", None, 404, "registered models: digits"),
    ("/v1/models/digits/variants/Int%208/retire", None, 400, "variant 'Int 8' is not a valid name"),
    ("/v1/models/digits/variants/int8/retire", {"why": "x"}, 400, "why: Extra inputs are not permitted"),
    ("/v1/models/digits/variants/int8/retire", {"reason": "x" * 1001}, 400, "reason: String should have at most"),
    ("/v1/models/digits/variants/int8/retire", {"reason": "a\x00b"}, 400, "reason: Value error, must not contain NUL"),
    ("/v1/models/digits/variants/int8/retire", [1], 400, "body: Input should be a valid dictionary"),
    (f"/v1/models/digits/variants/{'x' * 64}/retire", None, 400, "variant: String should have at most 63"),
])
def test_bad_requests_answer_4xx_naming_what_is_accepted(client: TestClient, world: World, path: str,
                                                         body: object, status: int, message: str) -> None:
    r = client.post(path, headers=world.auth("operator"), json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_a_viewer_cannot_retire(client: TestClient, world: World) -> None:
    assert client.post(RETIRE.format("int8")).status_code == 401
    r = client.post(RETIRE.format("int8"), headers=world.auth("viewer"))
    assert r.status_code == 403 and "operator" in r.json()["error"]


def test_only_the_leader_collects_and_it_retries_every_interval(client: TestClient, world: World,
                                                                 tmp_path: Path) -> None:
    rollout_id = start_rollout(world)
    version = client.get(f"/v1/rollouts/{rollout_id}", headers=world.auth("viewer")).json()["version"]
    r = client.post(f"/v1/rollouts/{rollout_id}/abort", headers={**world.auth("operator"), "If-Match": f'"{version}"'})
    assert r.status_code == 200, r.text
    assert client.post(RETIRE.format("int8"), headers=world.auth("operator")).status_code == 200
    settings = world.settings.model_copy(update={"artifacts_dir": tmp_path / "artifacts", "retention_days": 0})
    follower = Housekeeping(settings, world.session_factory, lambda: False)
    assert follower.run_once() is None
    with world.session_factory() as session:
        assert session.scalars(select(SampleWindowRow)).first() is not None
    leader = Housekeeping(settings, world.session_factory, lambda: True, interval_s=0.05, first_delay_s=0.0)
    leader.start()
    try:
        deadline = time.monotonic() + 10
        while leader.counts["passes"] < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        leader.stop()
    assert leader.counts["passes"] >= 2 and leader.counts["errors"] == 0
    assert leader.counts["artifacts"] == 1  # int8's, removed once; later passes find nothing to do
    assert leader.counts["windows"] > 0
    with world.session_factory() as session:
        removed = session.scalars(select(ArtifactRow.sha256).where(ArtifactRow.removed_at.is_not(None))).all()
        assert removed == ["b" * 64]
        assert session.scalars(select(SampleWindowRow)).all() == []
    events = client.get(f"/v1/rollouts/{rollout_id}/events", headers=world.auth("viewer")).json()["events"]
    assert events[-1]["kind"] == "aborted"  # the decisions stay, and the status page still tells them
    client.post("/login", data={"token": world.tokens["viewer"], "next": "/"}, follow_redirects=False)
    page = client.get(f"/rollouts/{rollout_id}")
    assert page.status_code == 200 and "aborted" in page.text
