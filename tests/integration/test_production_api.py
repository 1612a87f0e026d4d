"""What serves each model, through the ops API on PostgreSQL + Redis: promotion records it, rollouts start from it,
the undo changes it at once, and every bad request is a 4xx that says what serves and what to do."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from modelroll.db import AuditEntryRow, ProductionRevisionRow
from tests.integration.controller_world import World, drop_reports

pytestmark = pytest.mark.timeout(120)

STEPS = [{"weight_pct": 10}, {"weight_pct": 100}]


def _rollout(client: TestClient, world: World, **body: Any) -> dict[str, Any]:
    r = client.post("/v1/rollouts", headers=world.auth("operator"),
                    json={"model": "digits", "candidate": "int8", "steps": STEPS, **body})
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def _command(client: TestClient, world: World, rollout_id: int, verb: str) -> dict[str, Any]:
    etag = client.get(f"/v1/rollouts/{rollout_id}", headers=world.auth("viewer")).headers["etag"]
    r = client.post(f"/v1/rollouts/{rollout_id}/{verb}", headers={**world.auth("admin"), "If-Match": etag})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _rollback(client: TestClient, world: World, role: str = "admin", **body: Any) -> Any:
    return client.post("/v1/models/digits/rollback", headers=world.auth(role), json=body)


def _serving(client: TestClient, world: World) -> tuple[str, int]:
    model = client.get("/v1/models/digits", headers=world.auth("viewer")).json()
    return model["production"], model["production_revision"]


def test_promotion_makes_the_candidate_serve_and_the_published_split_follows(client: TestClient,
                                                                             world: World) -> None:
    rollout = _rollout(client, world)
    assert rollout["baseline"] == "fp32"  # the default baseline is what serves
    promoted = _command(client, world, rollout["id"], "promote")
    assert promoted["phase"] == "promoted"
    assert _serving(client, world) == ("int8", 2)
    split = world.channel.get_splits()["digits"]
    assert dict(split.weights) == {"int8": 100.0} and split.baseline == "int8" and split.rollout_id is None
    revisions = client.get("/v1/models/digits/revisions", headers=world.auth("viewer")).json()["revisions"]
    assert [(r["revision"], r["variant"], r["action"], r["rollout_id"]) for r in revisions] == [
        (2, "int8", "promoted", rollout["id"]), (1, "fp32", "registered", None)]
    assert revisions[0]["actor"] == "token:admin-1"


def test_a_rollout_names_what_serves_or_nothing(client: TestClient, world: World) -> None:
    _command(client, world, _rollout(client, world)["id"], "promote")
    r = client.post("/v1/rollouts", headers=world.auth("operator"),
                    json={"model": "digits", "baseline": "fp32", "candidate": "int8", "steps": STEPS})
    assert r.status_code == 409
    assert "served by 'int8' (revision 2), not 'fp32'" in r.json()["error"]
    assert "models rollback digits --to fp32" in r.json()["error"]
    r = client.post("/v1/rollouts", headers=world.auth("operator"),
                    json={"model": "digits", "baseline": "nope", "candidate": "fp32", "steps": STEPS})
    assert r.status_code == 404 and "'nope'" in r.json()["error"]
    back = client.post("/v1/rollouts", headers=world.auth("operator"),
                       json={"model": "digits", "candidate": "fp32", "steps": STEPS, "force": True})
    assert back.status_code == 201 and back.json()["baseline"] == "int8"


def test_a_candidate_without_a_passing_offline_report_needs_force_which_is_audited(client: TestClient,
                                                                                     world: World) -> None:
    drop_reports(world)
    r = client.post("/v1/rollouts", headers=world.auth("operator"),
                    json={"model": "digits", "candidate": "int8", "steps": STEPS})
    assert r.status_code == 409 and "has no offline report" in r.json()["error"] and "--force" in r.json()["error"]
    forced = _rollout(client, world, force=True)
    assert "forced past the offline verdict" in forced["reason"]
    events = client.get(f"/v1/rollouts/{forced['id']}/events", headers=world.auth("viewer")).json()["events"]
    assert events[0]["evidence"]["forced"] is True and events[0]["evidence"]["offline"]["report"] is None
    with world.session_factory() as session:
        entry = session.scalars(select(AuditEntryRow).where(AuditEntryRow.action == "rollout.create")).one()
        assert entry.actor == "token:operator-1" and entry.after["forced"] is True


def test_undo_returns_to_the_previous_revision_at_once_and_is_audited(client: TestClient, world: World) -> None:
    _command(client, world, _rollout(client, world)["id"], "promote")
    r = _rollback(client, world, reason="p99 regression")
    assert r.status_code == 200, r.text
    assert r.json()["production"]["variant"] == "fp32" and r.json()["previous"]["variant"] == "int8"
    assert _serving(client, world) == ("fp32", 3)
    split = world.channel.get_splits()["digits"]
    assert dict(split.weights) == {"fp32": 100.0} and split.baseline == "fp32"
    r = _rollback(client, world, revision=2)  # and forward again, by revision
    assert r.status_code == 200 and _serving(client, world) == ("int8", 4)
    with world.session_factory() as session:
        entries = session.scalars(select(AuditEntryRow).where(AuditEntryRow.action == "model.rollback")
                                  .order_by(AuditEntryRow.id)).all()
        assert [(e.actor, e.before["variant"], e.after["variant"]) for e in entries] == [
            ("token:admin-1", "int8", "fp32"), ("token:admin-1", "fp32", "int8")]
        assert entries[0].after["reason"] == "p99 regression"


@pytest.mark.parametrize(("body", "status", "needle"), [
    ({"to": "nope"}, 404, "has no variant 'nope': its variants are fp32, int8"),
    ({"revision": 7}, 404, "has no revision 7: its revisions are 1 to 1"),
    ({}, 404, "nothing earlier to roll back to"),
    ({"to": "fp32"}, 409, "'fp32' already serves model 'digits' (revision 1)"),
    ({"to": "int8", "revision": 1}, 400, "either --to VARIANT or --revision N"),
    ({"to": "int8", "expected_revision": 5}, 409, "is at revision 1 (fp32), you expected revision 5"),
    ({"to": "Not A Name"}, 404, "no variant 'Not A Name'"),
    ({"to": "int8", "surprise": 1}, 400, "surprise"),
    ({"revision": 0}, 400, "revision"),
])
def test_bad_rollbacks_are_refused_with_what_serves_and_nothing_is_written(
        client: TestClient, world: World, body: dict[str, Any], status: int, needle: str) -> None:
    r = _rollback(client, world, **body)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]
    assert _serving(client, world) == ("fp32", 1)


def test_rollback_of_an_unknown_model_roles_and_an_active_rollout(client: TestClient, world: World) -> None:
    r = client.post("/v1/models/nope/rollback", headers=world.auth("admin"), json={})
    assert r.status_code == 404 and "registered models: digits" in r.json()["error"]
    assert _rollback(client, world, "operator", to="int8").status_code == 403
    rollout = _rollout(client, world)
    r = _rollback(client, world, to="int8")
    assert r.status_code == 409 and f"active rollout {rollout['id']}" in r.json()["error"]
    assert "--abort-active" in r.json()["error"]
    assert _serving(client, world) == ("fp32", 1)
    r = _rollback(client, world, to="int8", abort_active=True, reason="straight to int8")
    assert r.status_code == 200 and r.json()["aborted_rollout"] == rollout["id"]
    assert client.get(f"/v1/rollouts/{rollout['id']}", headers=world.auth("viewer")).json()["phase"] == "aborted"
    assert _serving(client, world) == ("int8", 2)


def test_concurrent_promotion_and_rollback_one_wins_the_other_gets_409(client: TestClient, world: World) -> None:
    """A promotion (through the rollout) and an undo with --abort-active race for the next revision."""
    rollout = _rollout(client, world)
    etag = client.get(f"/v1/rollouts/{rollout['id']}", headers=world.auth("viewer")).headers["etag"]
    answers: dict[str, int] = {}
    bodies: dict[str, str] = {}
    barrier = threading.Barrier(2)

    def promote() -> None:
        barrier.wait()
        r = client.post(f"/v1/rollouts/{rollout['id']}/promote", headers={**world.auth("admin"), "If-Match": etag})
        answers["promote"], bodies["promote"] = r.status_code, r.text

    def undo() -> None:
        barrier.wait()
        r = _rollback(client, world, to="int8", abort_active=True)
        answers["rollback"], bodies["rollback"] = r.status_code, r.text

    threads = [threading.Thread(target=promote), threading.Thread(target=undo)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(answers.values()) == [200, 409], bodies
    with world.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(ProductionRevisionRow)) == 2  # one change, not two
    assert _serving(client, world) == ("int8", 2)


def test_the_models_rollback_and_history_verbs(world: World) -> None:
    from typer.testing import CliRunner

    from controller.app import create_app
    from modelroll_app.main import app as cli_app
    from tests.loopback import ServedApp

    served = ServedApp(create_app(world.settings, world.channel, world.session_factory), "controller-api")
    env = {"MODELROLL_DATABASE_URL": world.settings.database_url, "MODELROLL_REDIS_URL": world.settings.redis_url,
           "MODELROLL_TOKEN": world.tokens["admin"]}

    def run(*args: str) -> Any:
        return CliRunner().invoke(cli_app, [*args, "--url", served.url], env=env)

    try:
        r = run("models", "rollback", "digits", "--to", "int8", "--reason", "try int8")
        assert r.exit_code == 0 and "digits: int8 serves (revision 2), was fp32 (revision 1)" in r.output, r.output
        r = run("models", "rollback", "digits", "--to", "int8")
        assert r.exit_code == 1 and "'int8' already serves model 'digits'" in r.output, r.output
        r = run("models", "rollback", "nope")
        assert r.exit_code == 1 and "no model named 'nope'" in r.output, r.output
        r = run("models", "rollback", "digits", "--revision", "two")
        assert r.exit_code == 2, r.output
        r = run("models", "history", "digits")
        assert r.exit_code == 0, r.output
        assert r.output.index("revision 2  int8  rollback") < r.output.index("revision 1  fp32  registered")
        env["MODELROLL_TOKEN"] = world.tokens["operator"]
        r = run("models", "rollback", "digits")
        assert r.exit_code == 1 and "needs the admin role" in r.output, r.output
    finally:
        served.stop()
