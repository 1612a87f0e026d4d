"""The ops API on PostgreSQL + Redis: auth roles, If-Match and 409s, bad input → 4xx with a message, audit."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.integration.controller_world import World

pytestmark = pytest.mark.timeout(120)

BODY = {"model": "digits", "baseline": "fp32", "candidate": "int8",
        "steps": [{"weight_pct": 0, "shadow": True}, {"weight_pct": 10}, {"weight_pct": 100}]}


def created(client: TestClient, world: World) -> dict:  # type: ignore[type-arg]
    r = client.post("/v1/rollouts", headers=world.auth("operator"), json=BODY)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def test_no_token_401_wrong_token_401_wrong_role_403(client: TestClient, world: World) -> None:
    r = client.get("/v1/rollouts")
    assert r.status_code == 401 and "bearer token" in r.json()["error"]
    r = client.get("/v1/rollouts", headers={"Authorization": "Bearer mr_not-a-token"})
    assert r.status_code == 401 and "unknown or revoked token" in r.json()["error"]
    r = client.get("/v1/rollouts", headers={"Authorization": "Basic abc"})
    assert r.status_code == 401 and "Bearer" in r.json()["error"]
    r = client.post("/v1/rollouts", headers=world.auth("viewer"), json=BODY)
    assert r.status_code == 403 and "needs the operator role" in r.json()["error"]
    rollout = created(client, world)
    r = client.post(f"/v1/rollouts/{rollout['id']}/promote", headers={**world.auth("operator"), "If-Match": '"1"'})
    assert r.status_code == 403 and "admin" in r.json()["error"]
    assert client.get("/v1/audit", headers=world.auth("viewer")).status_code == 403
    assert client.get("/v1/rollouts", headers=world.auth("viewer")).status_code == 200


def test_anonymous_viewer_can_read_but_not_change(world: World) -> None:
    world.settings = world.settings.model_copy(update={"allow_anonymous_viewer": True, "admin_token": "s3cret"})
    with world.client() as client:
        assert client.get("/v1/models").status_code == 200
        r = client.post("/v1/rollouts", json=BODY)  # no token: 401 (send one), not 403 (a higher role)
        assert r.status_code == 401 and "needs a bearer token with the operator role" in r.json()["error"]
        assert r.headers["www-authenticate"] == "Bearer"
        r = client.post("/v1/rollouts", json=BODY, headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 201 and r.json()["created_by"] == "admin-token"


def test_create_get_list_and_etag(client: TestClient, world: World) -> None:
    rollout = created(client, world)
    assert rollout["phase"] == "pending" and rollout["version"] == 1 and rollout["steps_total"] == 3
    got = client.get(f"/v1/rollouts/{rollout['id']}", headers=world.auth("viewer"))
    assert got.headers["etag"] == '"1"' and got.json()["weights"] == {"fp32": 100.0}
    listed = client.get("/v1/rollouts?model=digits&active=true", headers=world.auth("viewer")).json()["rollouts"]
    assert [r["id"] for r in listed] == [rollout["id"]]
    assert client.get("/v1/rollouts?phase=promoted", headers=world.auth("viewer")).json()["rollouts"] == []
    evs = client.get(f"/v1/rollouts/{rollout['id']}/events", headers=world.auth("viewer")).json()["events"]
    assert [e["kind"] for e in evs] == ["created"] and evs[0]["actor"] == "token:operator-1"


def test_second_active_rollout_for_a_model_is_409(client: TestClient, world: World) -> None:
    first = created(client, world)
    r = client.post("/v1/rollouts", headers=world.auth("operator"), json=BODY)
    assert r.status_code == 409 and f"already has an active rollout {first['id']}" in r.json()["error"]


def test_unknown_model_or_variant_is_404_with_what_exists(client: TestClient, world: World) -> None:
    r = client.post("/v1/rollouts", headers=world.auth("operator"), json={**BODY, "model": "iris"})
    assert r.status_code == 404 and "registered models: ['digits']" in r.json()["error"]
    r = client.post("/v1/rollouts", headers=world.auth("operator"), json={**BODY, "candidate": "int4"})
    assert r.status_code == 404 and "'int4' is not a variant of model 'digits'" in r.json()["error"]
    assert "fp32" in r.json()["error"]


BAD_BODIES: list[tuple[object, str]] = [
    ({**BODY, "steps": []}, "steps"),
    ({**BODY, "steps": [{"weight_pct": 50}, {"weight_pct": 10}]}, "weights must go up"),
    ({**BODY, "steps": [{"weight_pct": 0}]}, "must be a shadow step"),
    ({**BODY, "candidate": "fp32"}, "must differ"),
    ({**BODY, "criteria": {"alpha": 0.9}}, "alpha"),
    ({**BODY, "on_deadline": "pray"}, "on_deadline"),
    ({**BODY, "colour": "red"}, "colour"),
    ({"model": "digits"}, "candidate"),
    ({**BODY, "model": "Not A Name"}, "not a valid name"),
    ([1, 2], "body"),
]


def test_bad_rollout_bodies_are_400_with_a_message(client: TestClient, world: World) -> None:
    for body, needle in BAD_BODIES:
        r = client.post("/v1/rollouts", headers=world.auth("operator"), json=body)
        assert r.status_code == 400, (body, r.text)
        assert needle in r.json()["error"], (body, r.text)


def test_unknown_memory_source_is_400_naming_the_accepted_values(client: TestClient, world: World) -> None:
    r = client.post("/v1/rollouts", headers=world.auth("operator"),
                    json={**BODY, "criteria": {"memory_source": "estimate"}})
    assert r.status_code == 400, r.text
    assert "criteria.memory_source" in r.json()["error"] and "'live' or 'offline'" in r.json()["error"]
    r = client.post("/v1/rollouts", headers=world.auth("operator"),
                    json={**BODY, "criteria": {"memory_source": "offline"}})
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["criteria"]["memory_source"] == "offline"


def test_malformed_json_is_400(client: TestClient, world: World) -> None:
    r = client.post("/v1/rollouts", headers={**world.auth("operator"), "Content-Type": "application/json"},
                    content=b"{not json")
    assert r.status_code == 400 and "invalid request" in r.json()["error"]


def test_commands_need_if_match_and_answer_409_when_stale(client: TestClient, world: World) -> None:
    rid = created(client, world)["id"]
    op = world.auth("operator")
    r = client.post(f"/v1/rollouts/{rid}/pause", headers=op)
    assert r.status_code == 428 and "If-Match" in r.json()["error"]
    r = client.post(f"/v1/rollouts/{rid}/pause", headers={**op, "If-Match": "yesterday"})
    assert r.status_code == 400 and "If-Match" in r.json()["error"]
    r = client.post(f"/v1/rollouts/{rid}/pause", headers={**op, "If-Match": '"1"'}, json={"reason": "hold on"})
    assert r.status_code == 200 and r.json()["phase"] == "paused" and r.headers["etag"] == '"2"'
    r = client.post(f"/v1/rollouts/{rid}/resume", headers={**op, "If-Match": '"1"'})
    assert r.status_code == 409 and "version 2" in r.json()["error"]
    r = client.post(f"/v1/rollouts/{rid}/pause", headers={**op, "If-Match": '"2"'})
    assert r.status_code == 200 and r.headers["etag"] == '"2"'  # already paused: nothing to do, no new version
    r = client.post(f"/v1/rollouts/{rid}/resume", headers={**op, "If-Match": '"2"'})
    assert r.status_code == 200 and r.json()["phase"] == "pending"


def test_set_weight_promote_abort_and_audit(client: TestClient, world: World) -> None:
    rid = created(client, world)["id"]
    rec = world.reconciler()
    rec.elector.poll()
    rec.tick()  # started: shadow, version 2
    op, admin = world.auth("operator"), world.auth("admin")
    r = client.post(f"/v1/rollouts/{rid}/weight", headers={**op, "If-Match": '"2"'}, json={"weight_pct": 101})
    assert r.status_code == 400 and "weight_pct" in r.json()["error"]
    r = client.post(f"/v1/rollouts/{rid}/weight", headers={**op, "If-Match": '"2"'},
                    json={"weight_pct": 20, "reason": "more traffic"})
    assert r.status_code == 200 and r.json()["weights"] == {"fp32": 80.0, "int8": 20.0} and r.json()["hold"] == "manual"
    assert dict(world.channel.get_splits()["digits"].weights) == {"fp32": 80.0, "int8": 20.0}
    r = client.post(f"/v1/rollouts/{rid}/promote", headers={**admin, "If-Match": '"3"'}, json={"reason": "hotfix"})
    assert r.status_code == 200 and r.json()["phase"] == "promoted"
    assert dict(world.channel.get_splits()["digits"].weights) == {"int8": 100.0}
    r = client.post(f"/v1/rollouts/{rid}/abort", headers={**op, "If-Match": '"4"'})
    assert r.status_code == 409 and "it is promoted" in r.json()["error"]
    evs = client.get(f"/v1/rollouts/{rid}/events", headers=world.auth("viewer")).json()["events"]
    assert [e["kind"] for e in evs][-2:] == ["weight_set", "override_promoted"]
    audit = client.get("/v1/audit", headers=op).json()["entries"]
    assert [a["action"] for a in audit] == ["rollout.promote", "rollout.set_weight", "rollout.create"]
    assert audit[0]["actor"] == "token:admin-1" and audit[0]["before"]["phase"] == "paused"
    assert audit[0]["after"]["phase"] == "promoted" and audit[0]["ts"]


def test_unknown_ids_and_names_are_404_or_400(client: TestClient, world: World) -> None:
    v = world.auth("viewer")
    assert client.get("/v1/rollouts/999", headers=v).status_code == 404
    assert client.get("/v1/rollouts/0", headers=v).status_code == 400
    assert client.get("/v1/rollouts/99999999999999", headers=v).status_code == 400
    assert client.get("/v1/rollouts/abc", headers=v).status_code == 400
    assert client.get("/v1/rollouts/999/events", headers=v).status_code == 404
    assert client.get("/v1/models/iris", headers=v).status_code == 404
    assert client.get("/v1/models/BAD%00NAME", headers=v).status_code == 400
    assert client.get("/v1/optimizations/5", headers=v).status_code == 404
    assert client.get("/v1/rollouts?model=%00", headers=v).status_code == 400
    assert client.get("/v1/nothing-here", headers=v).status_code == 404


def test_models_and_variants(client: TestClient, world: World) -> None:
    v = world.auth("viewer")
    models = client.get("/v1/models", headers=v).json()["models"]
    assert models == [{"name": "digits", "description": "digits MLP", "created_at": models[0]["created_at"],
                       "active_rollout": None, "production": "fp32", "production_revision": 1,
                       "variants": ["fp32", "int8"]}]
    variants = client.get("/v1/models/digits/variants", headers=v).json()["variants"]
    assert [(x["name"], x["role"], x["parent"]) for x in variants] == [("fp32", "baseline", None),
                                                                        ("int8", "candidate", "fp32")]
    assert client.get("/v1/models/digits", headers=v).json()["variants"][1]["size_bytes"] == 300


def test_bad_optimization_requests_are_4xx(client: TestClient, world: World) -> None:
    op = world.auth("operator")
    r = client.post("/v1/optimizations", headers=op, json={"model": "digits", "techniques": ["magic"]})
    assert r.status_code == 400, r.text
    r = client.post("/v1/optimizations", headers=op, json={"colour": 1})
    assert r.status_code == 400 and "colour: Extra inputs are not permitted" in r.json()["error"]
    assert "model: Field required" in r.json()["error"]
    r = client.post("/v1/optimizations", headers=op, json={"model": "iris"})
    assert r.status_code == 404, r.text


def test_healthz_readyz_metrics(client: TestClient, world: World) -> None:
    assert client.get("/healthz").json() == {"ok": True}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["database"]["ok"] and ready.json()["checks"]["live"]
    rid = created(client, world)["id"]
    text = client.get("/metrics").text
    assert f'modelroll_rollout_phase{{model="digits",phase="pending",rollout_id="{rid}"}} 1.0' in text
    assert 'modelroll_rollout_weight_pct{model="digits",variant="fp32"} 100.0' in text
    assert 'modelroll_rollout_decisions_total{kind="created"} 1.0' in text
    assert "modelroll_controller_leader 0.0" in text


def test_readyz_reports_a_database_that_is_down(world: World) -> None:
    from sqlalchemy.orm import sessionmaker

    from controller.app import create_app
    from modelroll.db import make_engine
    from modelroll.settings import Settings

    dead = make_engine(Settings(database_url="postgresql+psycopg://postgres@127.0.0.1:1/none"))
    with TestClient(create_app(world.settings, world.channel, sessionmaker(dead))) as client:
        r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["database"]["ok"] is False
    assert r.json()["checks"]["live"]["ok"] is True


def test_an_optimization_with_a_bad_recipe_parameter_is_400_and_queues_nothing(client: TestClient,
                                                                               world: World) -> None:
    before = client.get("/v1/optimizations", headers=world.auth("viewer")).json()["optimizations"]
    r = client.post("/v1/optimizations", headers=world.auth("operator"),
                    json={"model": "digits", "techniques": ["prune:1.5"]})
    assert r.status_code == 400
    assert "prune: amount='1.5' is not accepted: amount is float in [0, 1)" in r.json()["error"]
    assert client.get("/v1/optimizations", headers=world.auth("viewer")).json()["optimizations"] == before
