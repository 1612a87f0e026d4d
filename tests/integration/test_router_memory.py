"""Runner memory as routers report it, in every runner mode, and the memory verdict the statistics draw from it.

The subprocess runner measures each variant's own memory exactly; the inline and HTTP runners cannot, and say
so in their samples (no figure). No memory verdict is ever pass or fail from an estimate.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controller.aggregate import Route, fold, observations
from controller.stats import MEMORY_MIN_READINGS, evaluate
from modelroll.db import SampleWindowRow
from modelroll.live.base import Sample, SplitConfig
from modelroll.live.memory import MemoryChannel
from modelroll.types import Criteria, CriterionResult, Verdict
from router.app import RouterApp
from router.variants import StaticVariantSource, VariantSpec
from tests.loopback import wait_for
from tests.router_fixtures import (
    SampleLog,
    client,
    digits_paths,
    digits_rows,
    infer_body,
    router_settings,
    run,
    running_app,
    served,
)
from tests.router_models import build_slow

__all__ = ["digits_paths"]  # fixture

pytestmark = pytest.mark.timeout(120)

ROUTE = Route(rollout_id=7, model="digits", baseline="baseline", candidate="int8", step_index=1)
READINGS = 30  # per variant: enough for the median confidence sequences to be bounded (25 at alpha 0.0025)
CRITERIA = Criteria(min_samples=20)


@pytest.fixture(scope="module")
def big_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A digits-shaped model with 65 MiB of weights: a baseline whose memory dwarfs the small candidate's."""
    return build_slow(tmp_path_factory.mktemp("router-memory") / "big.onnx", width=4096, layers=1)


def _publish(app: RouterApp, channel: MemoryChannel, weights: dict[str, float]) -> None:
    stored = channel.publish_split(SplitConfig("digits", weights, rollout_id=ROUTE.rollout_id, step=ROUTE.step_index))
    wait_for(lambda: (app.table.routes["digits"].config or SplitConfig("digits", {"x": 100.0})).version
             == stored.version, 10, "split applied")


def _serve_requests(app: RouterApp, n: int = 60) -> None:
    rows, _ = digits_rows(1)

    async def go() -> None:
        async with client(app) as c:
            for i in range(n):
                answer = await c.post("/v2/models/digits/infer", content=infer_body(rows),
                                      headers={"x-modelroll-key": f"user-{i}"})
                assert answer.status_code == 200, answer.text
    run(go())


def _memory_by_variant(samples: list[Sample]) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    for s in samples:
        if s.kind == "memory":
            out.setdefault(s.variant, []).append(s)
    return out


def _enough(samples: list[Sample]) -> bool:
    by = _memory_by_variant(samples)
    return all(len(by.get(v, [])) >= READINGS for v in ("baseline", "int8"))


def _memory_verdict(samples: list[Sample], criteria: Criteria = CRITERIA) -> CriterionResult:
    """The samples through the controller's own fold and statistics, as the reconciler runs them."""
    windows, _ = fold(samples, {ROUTE.rollout_id: ROUTE}, {ROUTE.model: ROUTE})
    rows = []
    for n, (key, window) in enumerate(windows.items()):
        row = SampleWindowRow(id=n + 1, rollout_id=key.rollout_id, variant=key.variant, step_index=key.step_index,
                              window_start=key.window_start, window_end=datetime.now(UTC), data={})
        window.merge_into(row)
        rows.append(row)
    obs = observations(rows, ROUTE.baseline, ROUTE.candidate, offline_memory_bytes=(100 * 2**20, 20 * 2**20))
    return next(r for r in evaluate(criteria, obs) if r.criterion == "memory")


@contextmanager
def _router(tmp_path: Path, source: StaticVariantSource, runner: str) -> Iterator[tuple[RouterApp, SampleLog]]:
    channel = MemoryChannel()
    log = SampleLog(channel)
    settings = router_settings(tmp_path, router_runner=runner, router_memory_interval_s=0.05)
    with running_app(settings, channel, source) as app:
        _publish(app, channel, {"baseline": 50.0, "int8": 50.0})
        _serve_requests(app)
        log.wait(_enough, 60)
        yield app, log


def _source(baseline: Path, candidate: Path) -> StaticVariantSource:
    return StaticVariantSource([VariantSpec("digits", "baseline", "baseline", baseline),
                                VariantSpec("digits", "int8", "candidate", candidate)])


def test_subprocess_runner_reports_exact_readings_and_memory_decides_on_them(
        tmp_path: Path, digits_paths: dict[str, Path], big_path: Path) -> None:
    with _router(tmp_path, _source(big_path, digits_paths["int8"]), "subprocess") as (_, log):
        samples = log.read()
    by = _memory_by_variant(samples)
    for variant, readings in by.items():
        assert all(s.memory_exact and s.runner == "subprocess" for s in readings), variant
        assert all(0 < s.memory_bytes < s.memory_total_bytes for s in readings), variant
    big = min(s.memory_bytes for s in by["baseline"])
    small = max(s.memory_bytes for s in by["int8"])
    assert big > 64 * 2**20 > 4 * small, (big, small)  # the 4096×4096 FP32 weights alone are 64 MiB
    memory = _memory_verdict(samples)
    assert memory.verdict is Verdict.PASS and memory.source == "live", memory.message
    assert memory.baseline_n >= READINGS and memory.candidate_n >= READINGS
    assert memory.message.startswith("candidate memory is 0.") and "(offline 0.20×)" in memory.message


def test_inline_runner_says_it_cannot_measure_and_memory_is_not_measurable_here(
        tmp_path: Path, digits_paths: dict[str, Path], big_path: Path) -> None:
    # The same pair that passes on exact readings: in the router's process it would pass or fail on an estimate.
    with _router(tmp_path, _source(big_path, digits_paths["int8"]), "inline") as (app, log):
        samples = log.read()
        assert "modelroll_runner_memory_bytes{" not in app.metrics.render().decode()  # no estimate exported
    for readings in _memory_by_variant(samples).values():
        assert all(not s.memory_exact and s.runner == "inline" for s in readings)
        assert all(s.memory_bytes == 0 == s.memory_total_bytes for s in readings)  # no estimate leaves the router
    memory = _memory_verdict(samples)
    assert memory.verdict is Verdict.UNDECIDED and memory.source == "unmeasurable"
    assert memory.message.startswith("not measurable here (inline runner): ")
    assert "MODELROLL_ROUTER_RUNNER=subprocess" in memory.message
    offline = _memory_verdict(samples, Criteria(min_samples=20, memory_source="offline"))  # type: ignore[arg-type]
    assert offline.verdict is Verdict.PASS and offline.source == "offline" and offline.estimate == pytest.approx(0.2)
    assert "baseline offline" in offline.message


def test_http_runner_says_it_cannot_measure_the_remote_model(tmp_path: Path, digits_paths: dict[str, Path]) -> None:
    remote_source = StaticVariantSource([VariantSpec("digits-remote", "baseline", "baseline", digits_paths["int8"])])
    with running_app(router_settings(tmp_path / "remote", router_runner="inline"), MemoryChannel(),
                     remote_source) as remote, served(remote) as url:
        source = StaticVariantSource([
            VariantSpec("digits", "baseline", "baseline", digits_paths["baseline"], runner="subprocess"),
            VariantSpec("digits", "int8", "candidate", url=url, remote_model="digits-remote")])
        with _router(tmp_path, source, "subprocess") as (_, log):
            samples = log.read()
    by = _memory_by_variant(samples)
    assert all(s.memory_exact and s.runner == "subprocess" for s in by["baseline"])
    assert all(not s.memory_exact and s.runner == "http" and s.memory_bytes == 0 for s in by["int8"])
    memory = _memory_verdict(samples)
    assert memory.verdict is Verdict.UNDECIDED and memory.source == "unmeasurable"
    assert memory.message.startswith("not measurable here (http runner): ")
    assert memory.baseline_n >= MEMORY_MIN_READINGS and memory.candidate_n == 0
