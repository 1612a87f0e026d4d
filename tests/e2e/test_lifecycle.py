"""The production lifecycle end to end, embedded and on PostgreSQL + Redis: two full cycles, and which variant the
router answered with at every stage (its `x-modelroll-variant` header, counted by the client load).

optimize → rollout → promote → a second rollout from the promoted variant → abort (the promoted variant keeps
serving) → undo to FP32 (the CLI) → a rollout back to the promoted variant whose shadow step collects pairs.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelroll.artifacts import ArtifactStore
from modelroll.settings import Settings
from modelroll_app import up
from modelroll_app.traffic import Traffic
from tests.e2e.processes import MODELROLL, cli, wait_for

pytestmark = pytest.mark.timeout(420)

ADMIN = "lifecycle-admin-secret"
MODEL = "digits"
TECHNIQUE = "prune:0.2,int8"
FAST_STEPS = [{"weight_pct": 50, "min_duration_s": 600, "min_samples": 10},
              {"weight_pct": 100, "min_duration_s": 600, "min_samples": 10}]


def _cache() -> Path:
    base = os.environ.get("MODELROLL_TEST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "modelroll-test")
    return Path(base) / "e2e-worker-home" / "cache"  # the trained digits model, shared with the other e2e tests


@pytest.fixture(params=["embedded", "distributed"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    common: dict[str, Any] = {"home": tmp_path / "home", "router_port": 0, "controller_port": 0,
                              "admin_token": ADMIN, "eval_max_time_s": 0.5, "eval_min_runs": 20,
                              "reconcile_interval_s": 0.5}
    if request.param == "embedded":
        return Settings(**common)
    return Settings(**common, database_url=request.getfixturevalue("pg_url"),
                    redis_url=request.getfixturevalue("redis_url"),
                    redis_prefix=request.getfixturevalue("redis_prefix"))


@pytest.fixture()
def services(settings: Settings) -> Iterator[up.Services]:
    started = up.start(settings)
    try:
        yield started
    finally:
        started.stop()


class Ops:
    """The ops API as an admin, failing the test on any unexpected answer."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)

    def call(self, method: str, path: str, expect: int = 200, **kw: Any) -> Any:
        r = self.http.request(method, path, **kw)
        assert r.status_code == expect, f"{method} {path}: {r.status_code} {r.text}"
        return r.json()

    def command(self, rollout_id: int, verb: str) -> Any:
        etag = self.http.get(f"/v1/rollouts/{rollout_id}").headers["etag"]
        return self.call("POST", f"/v1/rollouts/{rollout_id}/{verb}", json={}, headers={"If-Match": etag})

    def rollout(self, candidate: str, steps: list[dict[str, Any]]) -> int:
        # force: this test's half-second offline measurement is too short to pass the gates reliably
        r = self.call("POST", "/v1/rollouts", 201, json={"model": MODEL, "candidate": candidate, "steps": steps,
                                                         "force": True})
        return int(r["id"])


def served(traffic: Traffic, answers: int = 120, timeout_s: float = 30.0) -> Counter[str]:
    """The variants that answered the next `answers` requests."""
    before = Counter(traffic.stats.served_by)
    deadline = time.monotonic() + timeout_s
    while sum((traffic.stats.served_by - before).values()) < answers:
        assert time.monotonic() < deadline, f"the load got fewer than {answers} answers in {timeout_s} s"
        time.sleep(0.02)
    return traffic.stats.served_by - before


def settle_on(traffic: Traffic, variant: str, timeout_s: float = 10.0) -> None:
    """Wait until a whole window of answers comes from `variant` alone, then check the next window too."""
    wait_for(f"{variant} alone answering", lambda: set(served(traffic, 60)) == {variant}, timeout_s)
    assert set(served(traffic)) == {variant}


def test_two_cycles_of_promote_rollout_abort_undo_and_a_shadow_rollout_back(
        settings: Settings, services: up.Services, tmp_path: Path) -> None:
    from optimizer.baselines import register_builtin
    from optimizer.sources import digits_eval_set

    ops = Ops(services.controller_url)
    with services.session_factory() as session, session.begin():
        register_builtin(session, ArtifactStore.from_settings(settings), MODEL, _cache())
    inputs, labels = digits_eval_set()
    traffic = Traffic(services.router_url, MODEL, inputs, labels, clients=2, feedback_delay_s=0.5,
                      max_requests=200_000)
    wait_for("the router serving the model registered while it runs",
             lambda: httpx.post(f"{services.router_url}/v2/models/{MODEL}/infer", timeout=5, json={
                 "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}],
             }).status_code == 200, 30)
    traffic.start()
    try:
        settle_on(traffic, "baseline")

        # 1. optimize, roll out, promote: the candidate serves and the catalog says so
        job = ops.call("POST", "/v1/optimizations", 202, json={"model": MODEL, "techniques": [TECHNIQUE],
                                                                "batch_sizes": [1]})
        done = wait_for("the optimization job", lambda: (j := ops.call("GET", f"/v1/optimizations/{job['id']}"))
                        ["status"] in ("succeeded", "failed") and j, 240)
        assert done["status"] == "succeeded", done
        candidate = next(r["variant"] for r in done["reports"] if r["variant"])
        first = ops.rollout(candidate, FAST_STEPS)
        wait_for("rollout 1 at 50 %", lambda: set(served(traffic)) == {"baseline", candidate}, 20)
        assert ops.command(first, "promote")["phase"] == "promoted"
        settle_on(traffic, candidate)
        assert ops.call("GET", f"/v1/models/{MODEL}")["production"] == candidate

        # 2. a second rollout starts from what serves (naming FP32 as its baseline is refused), then is aborted
        refused = ops.call("POST", "/v1/rollouts", 409, json={"model": MODEL, "baseline": "baseline",
                                                               "candidate": "baseline", "force": True})
        assert repr(candidate) in refused["error"]
        second = ops.call("POST", "/v1/rollouts", 201, json={"model": MODEL, "candidate": "baseline",
                                                              "force": True, "steps": FAST_STEPS})
        assert second["baseline"] == candidate
        wait_for("rollout 2 at 50 %", lambda: set(served(traffic)) == {"baseline", candidate}, 20)
        assert ops.command(second["id"], "abort")["phase"] == "aborted"
        settle_on(traffic, candidate)

        # 3. undo to FP32 with the CLI: at once, audited, a new revision
        env = {**os.environ, "MODELROLL_TOKEN": ADMIN, "MODELROLL_HOME": str(settings.home)}
        undo = cli(env, "models", "rollback", MODEL, "--to", "baseline", "--reason", "e2e undo",
                    "--url", services.controller_url)
        assert undo["production"]["variant"] == "baseline" and undo["previous"]["variant"] == candidate
        settle_on(traffic, "baseline")
        history = ops.call("GET", f"/v1/models/{MODEL}/revisions")["revisions"]
        assert [(r["variant"], r["action"]) for r in history] == [
            ("baseline", "rollback"), (candidate, "promoted"), ("baseline", "registered")]

        # 4. roll back out to the promoted variant: its shadow step mirrors to it and collects pairs
        third = ops.rollout(candidate, [{"weight_pct": 0, "shadow": True, "min_duration_s": 600,
                                         "min_samples": 10**6}, {"weight_pct": 100}])
        paired = wait_for("shadow pairs collected", lambda: (ops.call("GET", f"/v1/rollouts/{third}")
                                                             .get("evaluation") or {}).get("paired", 0) > 20, 60)
        assert paired
        assert set(served(traffic)) == {"baseline"}  # a shadow step serves nothing from the candidate
    finally:
        traffic.stop()
    assert traffic.stats.failed == 0, traffic.stats.errors



def test_a_model_registered_with_the_cli_while_services_run_is_served_within_a_second(
        settings: Settings, services: up.Services) -> None:
    from optimizer.baselines import builtin_source

    onnx_path = builtin_source(MODEL, _cache()).onnx_path
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
    url = f"{services.router_url}/v2/models/cnn2/infer"
    with httpx.Client(timeout=5) as http:
        assert http.post(url, json=body).status_code == 404
        env = {**os.environ, "MODELROLL_HOME": str(settings.home), "MODELROLL_DATABASE_URL": settings.database_url,
               "MODELROLL_REDIS_URL": settings.redis_url, "MODELROLL_REDIS_PREFIX": settings.redis_prefix}
        registered = subprocess.run([MODELROLL, "models", "register", str(onnx_path), "--name", "cnn2"], env=env,
                                    capture_output=True, text=True, timeout=60)
        assert registered.returncode == 0, registered.stderr
        committed = time.monotonic()  # the CLI has exited: its transaction is committed
        wait_for("cnn2 answered", lambda: http.post(url, json=body).status_code == 200, 5.0, 0.01)
        elapsed_s = time.monotonic() - committed
    print(f"\nregistered with the CLI → served by the router in {elapsed_s * 1000:.0f} ms ({settings.router_runner})")
    assert elapsed_s < 1.0
