"""`modelroll apply -f`, `get rollout -o yaml` and `rollout approve` against a real controller API (uvicorn on
loopback), PostgreSQL and Redis: both examples apply, the exit codes (0 applied or unchanged, 1 refused, 2 a wrong
file with its name and line, nothing applied), and kind Model documents registered from local files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from controller.app import create_app
from modelroll.db import ModelRow, RolloutRow, VariantRow
from modelroll_app.main import app as cli_app
from tests.integration.controller_world import World, make_world
from tests.integration.test_apply_api import tiny_onnx
from tests.integration.test_approval import leader, to_waiting
from tests.loopback import ServedApp

pytestmark = pytest.mark.timeout(180)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture()
def world(pg_url: str, redis_url: str, redis_prefix: str, tmp_path: Path) -> Iterator[World]:
    yield from make_world(pg_url, redis_url, redis_prefix, artifacts_dir=tmp_path / "artifacts")


@pytest.fixture()
def url(world: World) -> Iterator[str]:
    served = ServedApp(create_app(world.settings, world.channel, world.session_factory), "controller-api")
    try:
        yield served.url
    finally:
        served.stop()


def run(world: World, url: str, *args: str, role: str = "operator", stdin: str | None = None) -> Any:
    env = {"MODELROLL_DATABASE_URL": world.settings.database_url, "MODELROLL_REDIS_URL": world.settings.redis_url,
           "MODELROLL_ARTIFACTS_DIR": str(world.settings.artifacts_dir), "MODELROLL_TOKEN": world.tokens[role]}
    return CliRunner().invoke(cli_app, [*args, "--url", url], env=env, input=stdin)


def phases(world: World) -> list[str]:
    with world.session_factory() as s:
        return list(s.scalars(select(RolloutRow.phase).order_by(RolloutRow.id)))


def test_both_examples_apply_print_back_and_an_approval_lets_the_second_go_on(
        world: World, url: str, tmp_path: Path) -> None:
    plain, approval = str(EXAMPLES / "rollout.yaml"), str(EXAMPLES / "rollout-approval.yaml")
    r = run(world, url, "apply", "-f", plain)
    assert r.exit_code == 0, r.output
    assert "rollout 'digits-int8' created: rollout 1 of digits (int8 vs fp32), pending" in r.output
    r = run(world, url, "apply", "-f", plain)
    assert r.exit_code == 0 and "rollout 'digits-int8' unchanged" in r.output, r.output
    r = run(world, url, "get", "rollout", "digits-int8", "-o", "yaml", role="viewer")
    assert r.exit_code == 0 and r.output.startswith("apiVersion: modelroll/v1\nkind: Rollout\n"), r.output
    printed = tmp_path / "printed.yaml"
    printed.write_text(r.output)
    r = run(world, url, "apply", "-f", str(printed))
    assert r.exit_code == 0 and "unchanged" in r.output, r.output

    r = run(world, url, "apply", "-f", approval)
    assert r.exit_code == 1, r.output  # one active rollout per model: refused, nothing created
    assert f"{approval}:8: metadata.name: rollout 'digits-int8-approved' not created" in " ".join(r.output.split())
    assert run(world, url, "rollout", "abort", "1").exit_code == 0
    r = run(world, url, "apply", "-f", approval)
    assert r.exit_code == 0 and "rollout 'digits-int8-approved' created: rollout 2" in r.output, r.output

    r = run(world, url, "rollout", "approve", "2", "--reason", "too early")
    assert r.exit_code == 1, r.output
    assert "cannot approve rollout 2: it is pending; approve applies to rollouts waiting for approval" in r.output
    r = run(world, url, "rollout", "approve", "2")
    assert r.exit_code == 2 and "--reason" in r.output, r.output
    to_waiting(world, leader(world), 2)
    assert phases(world) == ["aborted", "waiting_approval"]
    r = run(world, url, "get", "rollout", "2", "-o", "json", role="viewer")
    assert r.exit_code == 0 and '"waiting": true' in r.output, r.output
    r = run(world, url, "rollout", "approve", "2", "--reason", "dashboards look fine")
    assert r.exit_code == 0, r.output
    assert "approved rollout 2 of digits: progressing, step 4 of 4" in r.output
    assert phases(world) == ["aborted", "progressing"]


def test_a_wrong_file_exits_2_naming_the_file_and_line_and_applies_nothing(
        world: World, url: str, tmp_path: Path) -> None:
    text = (EXAMPLES / "rollout.yaml").read_text()
    cases = {
        "unknown.yaml": (text.replace("  candidate: int8 ", "  colour: blue\n  candidate: int8 "),
                         "unknown.yaml:10: spec.colour: unknown field"),
        "model.yaml": (text.replace("  model: digits", "  model: letters"),
                       "model.yaml:9: spec.model: model 'letters' is not registered"),
        "down.yaml": (text.replace("{weight_pct: 25,", "{weight_pct: 2,"),
                      "down.yaml:15: spec.steps[2]: weights must go up"),
        "bomb.yaml": ("\n".join(["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
                                + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]),
                      "a YAML bomb is refused"),
        "big.yaml": (text + "#" * (1024 * 1024), "over the 1048576 bytes (1 MiB)"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_text(content)
        r = run(world, url, "apply", "-f", str(path))
        assert r.exit_code == 2, (name, r.output)
        assert message in " ".join(r.output.split()).replace(str(tmp_path) + "/", ""), (name, r.output)
    r = run(world, url, "apply", "-f", str(tmp_path / "missing.yaml"))
    assert r.exit_code == 2 and "no such file" in r.output
    r = run(world, url, "apply", "-f", "-", stdin=text)
    assert r.exit_code == 0 and "created" in r.output, r.output
    r = run(world, url, "apply", "-f", "-", stdin=text.replace("{weight_pct: 0, shadow: true, min_duration_s: 60",
                                                              "{weight_pct: 0, shadow: true, min_duration_s: 1"))
    assert r.exit_code == 0 and "configured (steps)" in r.output, r.output  # pending: every step may change
    r = run(world, url, "apply", "-f", "-", stdin=text.replace("candidate: int8 ", "candidate: fp32 "))
    assert r.exit_code == 2 and "baseline and candidate must differ" in r.output, r.output
    r = run(world, url, "get", "rollout", "1", "-o", "xml")
    assert r.exit_code == 2 and "-o 'xml' is not accepted: use yaml or json" in r.output
    assert phases(world) == ["pending"]


MODEL = """apiVersion: modelroll/v1
kind: Model
metadata: {name: tiny}
spec:
  path: model.onnx
  variants:
    - {name: doubled, path: doubled.onnx}
"""


def test_a_model_document_registers_local_files_once(world: World, url: str, tmp_path: Path) -> None:
    folder = tmp_path / "models"
    tiny_onnx(folder / "model.onnx")
    tiny_onnx(folder / "doubled.onnx", scale=4.0)
    doc = folder / "tiny.yaml"
    doc.write_text(MODEL)
    r = run(world, url, "apply", "-f", str(doc), "--dry-run")
    assert r.exit_code == 0 and "model 'tiny' created (registered, variant doubled) (dry run)" in r.output, r.output
    with world.session_factory() as s:
        assert s.scalar(select(ModelRow).where(ModelRow.name == "tiny")) is None
    r = run(world, url, "apply", "-f", str(doc))
    assert r.exit_code == 0 and "model 'tiny' created (registered, variant doubled)" in r.output, r.output
    r = run(world, url, "apply", "-f", str(doc))
    assert r.exit_code == 0 and "model 'tiny' unchanged" in r.output, r.output
    with world.session_factory() as s:
        names = sorted(s.scalars(select(VariantRow.name).join(ModelRow).where(ModelRow.name == "tiny")))
        assert names == ["baseline", "doubled"]
    doc.write_text(MODEL.replace("doubled.onnx", "nowhere.onnx"))
    r = run(world, url, "apply", "-f", str(doc))
    assert r.exit_code == 2 and "tiny.yaml:7: spec.variants[0].path: no file at" in r.output, r.output
    doc.write_text(MODEL.replace("path: model.onnx", "path: doubled.onnx"))
    r = run(world, url, "apply", "-f", str(doc))
    assert r.exit_code == 1 and "variant 'baseline' of model 'tiny' is registered from another file" in " ".join(
        r.output.split()), r.output
