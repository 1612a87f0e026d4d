"""The rollout and tokens verbs against a real controller API (uvicorn on loopback), PostgreSQL and Redis."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from controller.app import create_app
from modelroll_app.main import app as cli_app
from tests.integration.controller_world import World, good_samples
from tests.loopback import ServedApp

pytestmark = pytest.mark.timeout(120)


@pytest.fixture()
def url(world: World) -> Iterator[str]:
    served = ServedApp(create_app(world.settings, world.channel, world.session_factory), "controller-api")
    try:
        yield served.url
    finally:
        served.stop()


def run(world: World, url: str, *args: str, role: str = "operator") -> Any:
    env = {"MODELROLL_DATABASE_URL": world.settings.database_url, "MODELROLL_REDIS_URL": world.settings.redis_url,
           "MODELROLL_TOKEN": world.tokens[role]}
    return CliRunner().invoke(cli_app, [*args, "--url", url] if args[0] == "rollout" else list(args), env=env)


def test_rollout_verbs_mirror_the_api(world: World, url: str) -> None:
    r = run(world, url, "rollout", "create", "--model", "digits", "--baseline", "fp32", "--candidate", "int8",
            "--steps", "shadow,100", "--min-duration-s", "0", "--min-samples", "100")
    assert r.exit_code == 0, r.output
    assert "created rollout 1 of digits (int8 vs fp32): pending, step 1 of 2" in r.output
    rec = world.reconciler()
    rec.elector.poll()
    rec.tick()
    world.channel.append_samples(good_samples(1, 0, 300, 1_000_000.0, shadow=True))
    rec.tick()
    r = run(world, url, "rollout", "status", "1")
    assert r.exit_code == 0, r.output
    assert "shadow, step 1 of 2, fp32 100 %, int8 0 % (shadow: int8)" in r.output
    assert "- latency_p50: pass: candidate p50 is" in r.output and "- errors: undecided" in r.output
    assert "last events" in r.output and "started" in r.output
    r = run(world, url, "rollout", "set-weight", "1", "30", "--reason", "more")
    assert r.exit_code == 0 and "paused" in r.output and "int8 30 %" in r.output, r.output
    r = run(world, url, "rollout", "resume", "1")
    assert r.exit_code == 0 and "shadow" in r.output, r.output
    r = run(world, url, "rollout", "pause", "1", "--json")
    assert r.exit_code == 0 and json.loads(r.output)["phase"] == "paused", r.output
    r = run(world, url, "rollout", "promote", "1")
    assert r.exit_code == 1 and "needs the admin role" in r.output
    r = run(world, url, "rollout", "promote", "1", role="admin")
    assert r.exit_code == 0 and "promoted" in r.output, r.output
    r = run(world, url, "rollout", "abort", "1")
    assert r.exit_code == 1 and "cannot abort rollout 1: it is promoted" in r.output
    r = run(world, url, "rollout", "list", "--json")
    assert [x["phase"] for x in json.loads(r.output)] == ["promoted"]


def test_bad_usage_and_errors_have_exit_codes(world: World, url: str) -> None:
    r = run(world, url, "rollout", "create", "--model", "digits", "--baseline", "fp32", "--candidate", "int8",
            "--steps", "shadow,lots")
    assert r.exit_code == 2 and "'lots' is not a percentage" in r.output
    r = run(world, url, "rollout", "create", "--model", "digits", "--baseline", "fp32", "--candidate", "int9")
    assert r.exit_code == 1 and "'int9' is not a variant" in r.output
    r = run(world, url, "rollout", "create", "--model", "digits", "--baseline", "fp32", "--candidate", "int8",
            "--memory-gate", "estimate")
    assert r.exit_code == 2 and "--memory-gate 'estimate' is not one of ['live', 'offline']" in r.output
    r = run(world, url, "rollout", "status", "42")
    assert r.exit_code == 1 and "rollout 42 does not exist" in r.output
    r = CliRunner().invoke(cli_app, ["rollout", "list", "--url", "http://127.0.0.1:9"],
                           env={"MODELROLL_TOKEN": "x"})
    assert r.exit_code == 1 and "cannot reach the controller" in r.output


def test_memory_gate_offline_is_stored_in_the_rollouts_criteria(world: World, url: str) -> None:
    r = run(world, url, "rollout", "create", "--model", "digits", "--baseline", "fp32", "--candidate", "int8",
            "--criteria", '{"alpha": 0.01}', "--memory-gate", "offline", "--json")
    assert r.exit_code == 0, r.output
    criteria = json.loads(r.output)["spec"]["criteria"]
    assert criteria["memory_source"] == "offline" and criteria["alpha"] == 0.01
    rec = world.reconciler()
    rec.elector.poll()
    rec.tick()
    world.channel.append_samples(good_samples(1, 0, 300, 1_000_000.0, shadow=True))
    rec.tick()
    r = run(world, url, "rollout", "status", "1")  # int8 has no optimizer figures: nothing to gate on offline
    assert "- memory (unmeasurable): undecided: not measurable here (offline): " in r.output, r.output


def test_tokens_create_prints_the_secret_once_and_stores_its_hash(world: World, url: str) -> None:
    r = run(world, url, "tokens", "create", "--role", "operator", "--name", "ci", "--json")
    assert r.exit_code == 0, r.output
    secret = json.loads(r.output)["token"]
    assert secret.startswith("mr_")
    with world.client() as client:
        ok = client.get("/v1/audit", headers={"Authorization": f"Bearer {secret}"})
        assert ok.status_code == 200
    r = run(world, url, "tokens", "create", "--role", "root", "--name", "x")
    assert r.exit_code == 2 and "unknown role 'root'" in r.output
    assert run(world, url, "tokens", "revoke", "--name", "ci").exit_code == 0
    with world.client() as client:
        assert client.get("/v1/audit", headers={"Authorization": f"Bearer {secret}"}).status_code == 401


def test_pipeline_verbs_exit_with_the_rollouts_outcome(world: World, url: str) -> None:
    """`rollout wait` is what a CI job gates on: 0 promoted, 1 aborted, 3 timed out; `report` is Markdown."""
    r = run(world, url, "rollout", "create", "--model", "digits", "--candidate", "int8", "--steps", "50,100")
    assert r.exit_code == 0, r.output
    r = run(world, url, "rollout", "wait", "1", "--timeout", "1", "--interval", "0.2")
    assert r.exit_code == 3 and "rollout 1: pending, step 1/2" in r.output, r.output
    assert run(world, url, "rollout", "promote", "1", role="admin").exit_code == 0
    r = run(world, url, "rollout", "wait", "1", "--timeout", "5")
    assert r.exit_code == 0 and "rollout 1: promoted" in r.output, r.output
    r = run(world, url, "rollout", "create", "--model", "digits", "--candidate", "fp32", "--force")
    assert r.exit_code == 0 and "(fp32 vs int8)" in r.output, r.output  # from what serves now: int8
    r = run(world, url, "rollout", "set-weight", "2", "-5")
    assert r.exit_code == 2 and "weight_pct" in r.output and "No such option" not in r.output, r.output
    assert run(world, url, "rollout", "abort", "2").exit_code == 0
    r = run(world, url, "rollout", "wait", "2")
    assert r.exit_code == 1 and "rollout 2 aborted" in r.output, r.output
    r = run(world, url, "rollout", "report", "1", "--markdown")
    assert r.exit_code == 0 and "### Rollout 1 of `digits`: `int8` vs `fp32` — **promoted**" in r.output
    assert f"{url}/rollouts/1" in r.output
    r = run(world, url, "rollout", "status", "99")
    assert r.exit_code == 1 and "list them with `modelroll rollout list`" in r.output, r.output


def test_pause_and_resume_twice_say_already_and_exit_0(world: World, url: str) -> None:
    assert run(world, url, "rollout", "create", "--model", "digits", "--candidate", "int8").exit_code == 0
    first = run(world, url, "rollout", "pause", "1")
    assert first.exit_code == 0 and "already" not in first.output
    again = run(world, url, "rollout", "pause", "1")
    assert again.exit_code == 0 and "rollout 1 is already paused: nothing to do" in again.output, again.output
