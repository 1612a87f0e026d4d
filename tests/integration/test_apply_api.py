"""POST /v1/apply and the rollout document on PostgreSQL + Redis: idempotent by metadata.name, what a running
rollout may change and what it refuses (field and line), bad documents 4xx with nothing applied, Model documents
only from the input root, and GET /v1/rollouts/{ref}/document applied back unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from modelroll.db import AuditEntryRow, ModelRow, RolloutEventRow, RolloutRow, VariantRow
from tests.integration.controller_world import World, good_samples, make_world

pytestmark = pytest.mark.timeout(120)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PLAIN = (EXAMPLES / "rollout.yaml").read_text()


@pytest.fixture()
def world(pg_url: str, redis_url: str, redis_prefix: str, tmp_path: Path) -> Iterator[World]:
    yield from make_world(pg_url, redis_url, redis_prefix, input_dir=tmp_path / "inputs",
                          artifacts_dir=tmp_path / "artifacts")


@pytest.fixture()
def client(world: World) -> Iterator[TestClient]:
    with world.client() as c:
        yield c


def apply(client: TestClient, world: World, text: str, role: str = "operator", content_type: str = "application/yaml",
          **params: Any) -> Any:
    return client.post("/v1/apply", content=text.encode(), params=params,
                       headers={**world.auth(role), "Content-Type": content_type})


def line_of(text: str, fragment: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if fragment in line)


def rollouts(world: World) -> list[RolloutRow]:
    with world.session_factory() as s:
        return list(s.scalars(select(RolloutRow).order_by(RolloutRow.id)))


def event_kinds(world: World, rollout_id: int) -> list[str]:
    with world.session_factory() as s:
        return list(s.scalars(select(RolloutEventRow.kind).where(RolloutEventRow.rollout_id == rollout_id)
                              .order_by(RolloutEventRow.seq)))


def test_applying_a_document_twice_creates_once_then_changes_nothing(client: TestClient, world: World) -> None:
    r = apply(client, world, PLAIN)
    assert r.status_code == 200, r.text
    [created] = r.json()["results"]
    assert (created["kind"], created["name"], created["action"]) == ("Rollout", "digits-int8", "created")
    rollout = created["rollout"]
    assert rollout["name"] == "digits-int8" and rollout["phase"] == "pending" and rollout["baseline"] == "fp32"
    assert [s["weight_pct"] for s in rollout["spec"]["steps"]] == [0, 5, 25, 100]
    assert rollout["spec"]["notifications"]["events"] == ["started", "promoted", "rolled_back", "aborted", "failed"]
    again = apply(client, world, PLAIN)
    assert again.status_code == 200 and again.json()["results"][0]["action"] == "unchanged"
    [row] = rollouts(world)
    assert row.version == rollout["version"] and event_kinds(world, row.id) == ["created"]
    with world.session_factory() as s:
        entry = s.scalars(select(AuditEntryRow).where(AuditEntryRow.action == "rollout.create")).one()
        assert entry.after["name"] == "digits-int8" and entry.actor == "token:operator-1"


def test_a_changed_document_changes_steps_ahead_and_refuses_the_rest_with_field_and_line(
        client: TestClient, world: World) -> None:
    rid = apply(client, world, PLAIN).json()["results"][0]["rollout"]["id"]
    pending = PLAIN.replace("{weight_pct: 25,", "{weight_pct: 30,").replace("alpha: 0.05", "alpha: 0.04")
    r = apply(client, world, pending)
    assert r.status_code == 200 and r.json()["results"][0]["action"] == "configured", r.text
    assert r.json()["results"][0]["changed"] == ["steps", "criteria"]  # a pending rollout may change both
    rec = world.reconciler()
    assert rec.elector.poll() is not None
    rec.tick()  # started: shadow, step 1 of 4
    world.channel.append_samples(good_samples(rid, 0, 1500, world.clock.now.timestamp(), shadow=True))
    rec.tick()  # every criterion has a verdict now
    version = rollouts(world)[0].version

    ahead = pending.replace("{weight_pct: 30,", "{weight_pct: 40,")
    r = apply(client, world, ahead)
    assert r.status_code == 200 and r.json()["results"][0]["changed"] == ["steps"], r.text
    assert rollouts(world)[0].spec["steps"][2]["weight_pct"] == 40
    assert event_kinds(world, rid)[-1] == "configured"
    version = rollouts(world)[0].version

    criteria = ahead.replace("alpha: 0.04", "alpha: 0.01")
    r = apply(client, world, criteria)
    assert r.status_code == 409, r.text
    assert f"line {line_of(criteria, 'criteria:')}: spec.criteria: spec.criteria cannot change: the statistics " \
           "have already given a verdict" in r.json()["error"]
    current = ahead.replace("{weight_pct: 0, shadow: true, min_duration_s: 60",
                            "{weight_pct: 0, shadow: true, min_duration_s: 30")
    r = apply(client, world, current)
    assert r.status_code == 409 and f"line {line_of(current, 'shadow: true')}: spec.steps[0]: step 1 cannot " \
                                    "change: it is current" in r.json()["error"], r.text
    other = ahead.replace("candidate: int8 ", "candidate: fp32 ")
    r = apply(client, world, other)
    assert r.status_code == 400 and "baseline and candidate must differ" in r.json()["error"], r.text
    deadline = ahead.replace("on_deadline: hold", "on_deadline: rollback")
    r = apply(client, world, deadline)
    assert r.status_code == 409 and f"line {line_of(deadline, 'on_deadline')}: spec.on_deadline: spec.on_deadline " \
                                    "cannot change" in r.json()["error"], r.text
    assert rollouts(world)[0].version == version  # nothing of a refused document was applied


def test_a_finished_rollout_takes_its_document_again_but_no_change(client: TestClient, world: World) -> None:
    rollout = apply(client, world, PLAIN).json()["results"][0]["rollout"]
    r = client.post(f"/v1/rollouts/{rollout['id']}/abort", headers={**world.auth("operator"),
                                                                    "If-Match": f'"{rollout["version"]}"'})
    assert r.status_code == 200, r.text
    assert apply(client, world, PLAIN).json()["results"][0]["action"] == "unchanged"
    r = apply(client, world, PLAIN.replace("{weight_pct: 25,", "{weight_pct: 30,"))
    assert r.status_code == 409 and "is aborted: a finished rollout does not change; to roll out again, apply the " \
                                    "document under a new metadata.name" in r.json()["error"]


@pytest.mark.parametrize(("old", "new", "status", "message"), [
    ("  candidate: int8 ", "  candidate: int8\n  colour: blue\n ", 400, "spec.colour: unknown field"),
    ("{weight_pct: 5,", "{weight_pct: five,", 400, "spec.steps[1].weight_pct: must be a number, got 'five'"),
    ("{weight_pct: 25,", "{weight_pct: 3,", 400, "spec.steps[2]: weights must go up, got 3.0 after 5.0"),
    ("  model: digits", "  model: letters", 400,
     "spec.model: model 'letters' is not registered; registered models: ['digits']"),
    ("  candidate: int8 ", "  candidate: int4 ", 400,
     "spec.candidate: 'int4' is not a variant of model 'digits'; its variants: ['fp32', 'int8']"),
    ("{weight_pct: 5, min_duration_s: 60,", "{weight_pct: 5, approval: true, timeout_s: -60, min_duration_s: 60,",
     400, "spec.steps[1].timeout_s: must be > 0, got -60"),
    ("apiVersion: modelroll/v1", "apiVersion: modelroll/v0", 400, "apiVersion: 'modelroll/v0' is not supported"),
])
def test_bad_documents_are_refused_with_field_and_line_and_nothing_is_applied(
        client: TestClient, world: World, old: str, new: str, status: int, message: str) -> None:
    assert old in PLAIN
    text = PLAIN.replace(old, new, 1)
    r = apply(client, world, text)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert message in error and error.startswith("line "), error
    assert not rollouts(world)


def test_a_yaml_bomb_an_oversized_body_and_other_bodies_are_refused(client: TestClient, world: World) -> None:
    bomb = "\n".join(["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
                     + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]) + "\n"
    r = apply(client, world, bomb)
    assert r.status_code == 400 and "a YAML bomb is refused" in r.json()["error"]
    r = apply(client, world, PLAIN + "#" * (1024 * 1024))
    assert r.status_code == 413 and "over" in r.json()["error"]
    r = apply(client, world, PLAIN, content_type="multipart/form-data")
    assert r.status_code == 400 and "send the document as application/yaml or application/json" in r.json()["error"]
    r = apply(client, world, "")
    assert r.status_code == 400 and "holds no document" in r.json()["error"]
    second_bad = PLAIN + "---\n" + PLAIN.replace("digits-int8", "other").replace("{weight_pct: 5,", "{weight_pct: -5,")
    r = apply(client, world, second_bad)
    assert r.status_code == 400 and "spec.steps[1].weight_pct: must be >= 0" in r.json()["error"]
    assert apply(client, world, PLAIN, role="viewer").status_code == 403
    assert not rollouts(world)  # the first document of the refused file was not applied either


def test_a_json_body_applies_like_yaml_and_dry_run_changes_nothing(client: TestClient, world: World) -> None:
    body = yaml.safe_load(PLAIN)
    body["spec"]["criteria"] = {"latency": 0.4}  # the short names are the same vocabulary
    import json

    text = json.dumps(body, indent=2)
    r = apply(client, world, text, content_type="application/json", dry_run="true")
    assert r.status_code == 200 and r.json()["dry_run"] and r.json()["results"][0]["action"] == "created", r.text
    assert not rollouts(world)
    r = apply(client, world, text, content_type="application/json")
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["rollout"]["spec"]["criteria"]["latency_reduction_min"] == 0.4


def test_the_document_prints_back_and_applies_unchanged(client: TestClient, world: World) -> None:
    rollout = apply(client, world, (EXAMPLES / "rollout-approval.yaml").read_text()).json()["results"][0]["rollout"]
    for ref in (str(rollout["id"]), "digits-int8-approved"):
        r = client.get(f"/v1/rollouts/{ref}/document", params={"format": "yaml"}, headers=world.auth("viewer"))
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/yaml"), r.text
    printed = r.text
    doc = yaml.safe_load(printed)
    assert doc["metadata"] == {"name": "digits-int8-approved"} and doc["spec"]["baseline"] == "fp32"
    assert doc["spec"]["steps"][2]["approval"] is True and "approval" not in doc["spec"]["steps"][1]
    assert doc["status"]["phase"] == "pending" and doc["status"]["id"] == rollout["id"]
    again = apply(client, world, printed)
    assert again.status_code == 200 and again.json()["results"][0]["action"] == "unchanged", again.text
    as_json = client.get(f"/v1/rollouts/{rollout['id']}/document", headers=world.auth("viewer")).json()
    assert as_json["spec"] == doc["spec"]
    r = client.get("/v1/rollouts/nope/document", headers=world.auth("viewer"))
    assert r.status_code == 404 and "no rollout named 'nope'" in r.json()["error"]


def test_the_rollouts_api_takes_approval_steps_and_short_criteria_names(client: TestClient, world: World) -> None:
    r = client.post("/v1/rollouts", headers=world.auth("operator"), json={
        "model": "digits", "candidate": "int8", "criteria": {"latency": 0.3},
        "steps": [{"weight_pct": 10, "approval": True, "timeout_s": 60, "on_timeout": "advance"},
                  {"weight_pct": 100}], "notifications": {"events": ["approval_needed"]}})
    assert r.status_code == 201, r.text
    spec = r.json()["spec"]
    assert spec["criteria"]["latency_reduction_min"] == 0.3 and spec["steps"][0]["on_timeout"] == "advance"
    assert spec["notifications"] == {"events": ["approval_needed"]}
    bad = client.post("/v1/rollouts", headers=world.auth("operator"), json={
        "model": "digits", "candidate": "int8", "steps": [{"weight_pct": 10, "approval": True, "timeout_s": -1}]})
    assert bad.status_code == 400 and "timeout_s" in bad.json()["error"]


def tiny_onnx(path: Path, scale: float = 2.0) -> Path:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.full((4, 2), scale, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["input", "w"], ["output"])], "tiny",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, 2])], [weight])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


MODEL = """apiVersion: modelroll/v1
kind: Model
metadata: {name: tiny}
spec:
  path: PATH
  description: a tiny model
  variants:
    - {name: doubled, path: VARIANT}
"""


def test_model_documents_name_files_only_inside_the_input_root(client: TestClient, world: World) -> None:
    root = world.settings.effective_input_dir
    tiny_onnx(root / "tiny" / "model.onnx")
    tiny_onnx(root / "tiny" / "doubled.onnx", scale=4.0)
    doc = MODEL.replace("PATH", "tiny/model.onnx").replace("VARIANT", "tiny/doubled.onnx")
    assert apply(client, world, doc).status_code == 403  # a new model serves at once: admin
    r = apply(client, world, doc, role="admin")
    assert r.status_code == 200, r.text
    assert r.json()["results"][0] | {"rollout": None} == {"kind": "Model", "name": "tiny", "action": "created",
                                                          "changed": ["registered", "variant doubled"],
                                                          "rollout": None}
    assert apply(client, world, doc, role="admin").json()["results"][0]["action"] == "unchanged"
    with world.session_factory() as s:
        model = s.scalars(select(ModelRow).where(ModelRow.name == "tiny")).one()
        assert s.scalar(select(func.count()).select_from(VariantRow).where(VariantRow.model_id == model.id)) == 2
    swapped = MODEL.replace("PATH", "tiny/doubled.onnx").replace("VARIANT", "tiny/doubled.onnx")
    r = apply(client, world, swapped, role="admin")
    assert r.status_code == 409 and "line 5: spec.path: variant 'baseline' of model 'tiny' is registered from " \
                                    "another file" in r.json()["error"], r.text
    outside = MODEL.replace("PATH", "/etc/passwd.onnx").replace("VARIANT", "tiny/doubled.onnx")
    r = apply(client, world, outside, role="admin")
    assert r.status_code == 400 and "line 5: spec.path must name an .onnx file inside the controller's input root" \
        in r.json()["error"], r.text
    escape = MODEL.replace("PATH", "../x.onnx").replace("VARIANT", "tiny/doubled.onnx")
    assert apply(client, world, escape, role="admin").status_code == 400
