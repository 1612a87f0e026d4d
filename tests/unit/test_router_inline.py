"""Fast in-process models run on the event loop; slow ones go back to the pool; a hang is ended by the watchdog."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from modelroll.live.memory import MemoryChannel
from router.breaker import Breaker
from router.inference import Inference, Outcome
from router.inline import InlineGate, Watchdog
from router.metrics import RouterMetrics
from router.runners import InlineRunner, RunnerTimeout
from router.samples import Recorder
from router.table import LoadedVariant
from router.variants import VariantSpec
from tests.router_models import build_digits, build_slow, digits_data


@pytest.fixture()
def watchdog() -> Iterator[Watchdog]:
    dog = Watchdog(period_s=0.002)
    yield dog
    dog.close()


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> InlineRunner:
    return InlineRunner(build_digits(tmp_path_factory.mktemp("digits"))["baseline"])


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> InlineRunner:
    return InlineRunner(build_slow(tmp_path_factory.mktemp("slow") / "slow.onnx"))


def _rows(n: int = 4) -> dict[str, np.ndarray]:
    return {"input": digits_data()[0][:n]}


def test_a_fast_model_runs_on_the_calling_thread_and_stays_open(digits: InlineRunner, watchdog: Watchdog) -> None:
    gate = InlineGate(digits, watchdog, max_ms=50.0, stall_s=1.0)
    assert gate.open
    outputs, wall_ms, cpu_ms = gate.run(_rows(), None)
    assert outputs["logits"].shape == (4, 10) and 0 < wall_ms < 50 and cpu_ms >= 0
    assert gate.open and gate.inline_runs == 1 and gate.cooldowns == 0


def test_one_run_over_the_limit_sends_the_variant_to_the_pool_for_a_cooldown(digits: InlineRunner,
                                                                               watchdog: Watchdog) -> None:
    gate = InlineGate(digits, watchdog, max_ms=50.0, stall_s=1.0, cooldown_s=0.2)
    gate._max_s = 0.0  # every run is "too slow" now (its CPU time is above 0)
    gate.run(_rows(), None)
    assert not gate.open and gate.cooldowns == 1
    time.sleep(0.25)
    assert gate.open


def test_a_model_slower_than_the_limit_at_warm_up_starts_on_the_pool(slow: InlineRunner, watchdog: Watchdog) -> None:
    assert slow.warmup_s > 0.0001
    assert not InlineGate(slow, watchdog, max_ms=slow.warmup_s * 1000 / 2, stall_s=1.0).open


def test_the_watchdog_ends_a_hanging_run_and_closes_the_gate(slow: InlineRunner, watchdog: Watchdog) -> None:
    gate = InlineGate(slow, watchdog, max_ms=1000.0, stall_s=0.05)
    big = {"input": np.ones((1024, 64), dtype=np.float32)}
    start = time.perf_counter()
    with pytest.raises(RunnerTimeout, match="watchdog"):
        gate.run(big, None)
    ended_after_s = time.perf_counter() - start
    assert watchdog.terminated == 1 and not gate.open
    start = time.perf_counter()
    outputs, _, _ = slow.run(big)  # the session itself is unharmed: the flag was on that run's options only
    whole_run_s = time.perf_counter() - start
    assert outputs["logits"].shape == (1024, 10)
    # Side by side, so a loaded machine slows both: the watchdog ends the run well before it would end by itself.
    assert ended_after_s < 0.5 * whole_run_s, (ended_after_s, whole_run_s)


def _call_inline(runner: InlineRunner, watchdog: Watchdog, role: str, *, stall_s: float,
                 timeout_s: float | None) -> tuple[Outcome, InlineGate]:
    """One `Inference._call` of a variant with an open gate on 1,024 rows, the pool beside it."""
    pool = ThreadPoolExecutor(2)
    recorder = Recorder(MemoryChannel(), capacity=100, flush_interval_s=10, feedback_ttl_s=60)
    inference = Inference(recorder, RouterMetrics(CollectorRegistry()), executor=pool, shadow_executor=pool,
                          candidate_timeout_s=5.0, shadow_max_concurrency=1)
    gate = InlineGate(runner, watchdog, max_ms=1000.0, stall_s=stall_s)
    variant = LoadedVariant(VariantSpec("slow", role, role, Path("unused.onnx")), runner, Breaker(3), gate)
    try:
        outcome = asyncio.run(inference._call(variant, {"input": np.ones((1024, 64), dtype=np.float32)},
                                              timeout_s, pool))
    finally:
        pool.shutdown()
    return outcome, gate


def test_a_baseline_ended_by_the_watchdog_still_answers_from_the_pool(slow: InlineRunner, watchdog: Watchdog) -> None:
    (outputs, latency_ms, _, error), gate = _call_inline(slow, watchdog, "baseline", stall_s=0.05, timeout_s=None)
    assert error is None and outputs is not None and outputs["logits"].shape == (1024, 10)
    assert watchdog.terminated == 1 and not gate.open and latency_ms > 50


def test_a_candidate_past_its_deadline_inline_is_a_timeout_not_a_second_run(slow: InlineRunner,
                                                                            watchdog: Watchdog) -> None:
    (outputs, _, _, error), _ = _call_inline(slow, watchdog, "candidate", stall_s=1.0, timeout_s=0.05)
    assert outputs is None and isinstance(error, RunnerTimeout)


def test_cpu_is_read_on_one_run_in_eight_and_scaled_to_the_others(digits: InlineRunner, watchdog: Watchdog) -> None:
    gate = InlineGate(digits, watchdog, max_ms=50.0, stall_s=1.0)
    figures = [gate.run(_rows(), None)[1:] for _ in range(16)]
    assert all(cpu_ms > 0 for _, cpu_ms in figures)
    assert all(cpu_ms <= wall_ms for i, (wall_ms, cpu_ms) in enumerate(figures) if i % 8)  # scaled, not read
    assert 0 < gate._cpu_per_wall <= 1.0 and gate.inline_runs == 16
