"""The inference hot path: choose a variant, run it off the event loop, fall back, mirror, record.

A candidate that errors or times out never reaches the client: the baseline answers, the
fallback is counted and the candidate's error sample recorded (its breaker may eject it). A variant
forced by an operator is no different, except that the answer says it came from the baseline
(`run` returns the fallback's reason; the app puts it in `x-modelroll-fallback`).
In a shadow step the baseline answers and the candidate runs the same inputs in the
background, bounded; both samples carry the same request id. A result holding NaN or ±Inf is
a failed call (V2 has no such value to answer): the baseline answers instead of a candidate, and
when the baseline's own result holds one, the input is the cause and the client gets a 400.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from modelroll.errors import InvalidInput, Unavailable
from router.finite import NON_FINITE_HINT, NonFiniteOutput, non_finite_output
from router.metrics import RouterMetrics
from router.protocol import InferRequest
from router.records import RequestRecord
from router.runners import Runner, RunnerBadInput, RunnerTimeout, Tensors
from router.samples import Recorder
from router.table import LoadedVariant, ModelRoutes

log = logging.getLogger(__name__)

_perf = time.perf_counter

Outcome = tuple[Tensors | None, float, float, BaseException | None]


def _timed_run(runner: Runner, inputs: Tensors, timeout_s: float | None) -> Outcome:
    start = _perf()
    try:
        outputs, cpu_ms, model_ms = runner.run(inputs, timeout_s)
    except Exception as exc:
        return None, (_perf() - start) * 1000.0, 0.0, exc
    return _on_time(outputs, _perf() - start, cpu_ms, timeout_s, model_ms)


def _on_time(outputs: Tensors, elapsed_s: float, cpu_ms: float, timeout_s: float | None,
             model_ms: float | None = None) -> Outcome:
    if timeout_s is not None and elapsed_s > timeout_s:
        # An answer can beat the deadline's timer (a GIL hand-off, an inline run the watchdog had no time to
        # end): late is a timeout all the same.
        late = RunnerTimeout(f"answered after {elapsed_s:.4f}s, past the {timeout_s}s deadline")
        return None, elapsed_s * 1000.0, cpu_ms, late
    latency_ms = model_ms if model_ms is not None else elapsed_s * 1000.0
    bad = non_finite_output(outputs)
    if bad is not None:
        return None, latency_ms, cpu_ms, NonFiniteOutput(bad)
    return outputs, latency_ms, cpu_ms, None


class Inference:
    def __init__(self, recorder: Recorder, metrics: RouterMetrics, *, executor: ThreadPoolExecutor,
                 shadow_executor: ThreadPoolExecutor, candidate_timeout_s: float, shadow_max_concurrency: int) -> None:
        self._recorder = recorder
        self._metrics = metrics
        self._executor = executor
        self._shadow_executor = shadow_executor
        self._timeout_s = candidate_timeout_s
        self._shadow_max = shadow_max_concurrency
        self._shadow_inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.shadow_skipped = 0
        self.fallbacks = 0

    async def _call(self, variant: LoadedVariant, inputs: Tensors, timeout_s: float | None,
                    executor: ThreadPoolExecutor, inline: bool = True) -> Outcome:
        gate = variant.inline
        if inline and gate is not None and gate.open:
            start = _perf()
            try:
                outputs, latency_ms, cpu_ms = gate.run(inputs, timeout_s)
                return _on_time(outputs, latency_ms / 1000.0, cpu_ms, timeout_s)
            except RunnerTimeout as exc:  # ended by the watchdog: the rest of the deadline goes to the pool
                if timeout_s is not None:
                    timeout_s -= _perf() - start
                    if timeout_s <= 0:
                        return None, (_perf() - start) * 1000.0, 0.0, exc
            except Exception as exc:
                return None, (_perf() - start) * 1000.0, 0.0, exc
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(executor, _timed_run, variant.runner, inputs, timeout_s)
        if timeout_s is None:
            return await future
        # A timer that cancels the future: a quarter of `asyncio.wait_for`'s cost per call (measured 0.5 vs 2.5 µs).
        timer = loop.call_later(timeout_s, future.cancel)
        try:
            return await future
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not future.cancelled() or (task is not None and task.cancelling()):
                raise  # the request itself is being cancelled, not a timeout
            return None, timeout_s * 1000.0, 0.0, RunnerTimeout(f"no answer within {timeout_s}s")
        finally:
            timer.cancel()

    def _count_failure(self, routes: ModelRoutes, variant: LoadedVariant, error: BaseException) -> str:
        status = "timeout" if isinstance(error, RunnerTimeout) else "error"
        self._metrics.errors.labels(routes.model, variant.name, status).inc()
        if variant is not routes.fallback and variant.breaker.failure():
            self._metrics.ejected.labels(routes.model, variant.name).set(1)
            log.error("variant ejected model=%s variant=%s after %d consecutive failures; last: %s",
                      routes.model, variant.name, variant.breaker.threshold, error)
        return status

    def _failed(self, routes: ModelRoutes, variant: LoadedVariant, request: InferRequest, request_id: str,
                ts: float, latency_ms: float, error: BaseException) -> None:
        status = self._count_failure(routes, variant, error)
        self._recorder.add(RequestRecord(
            routes.model, variant.name, ts, routes.rollout_id, routes.step, request_id, latency_ms,
            latency_ms, status, 0.0, request.batch_size, False, None, False))

    def fallback(self, routes: ModelRoutes, chosen: str, reason: str) -> None:
        """Count one request that the split's baseline answered instead of `chosen`."""
        self.fallbacks += 1
        self._metrics.fallbacks.labels(routes.model, chosen, reason).inc()

    async def run(self, routes: ModelRoutes, request: InferRequest, request_id: str, key: str | None,
                  forced: LoadedVariant | None, ts: float,
                  start: float) -> tuple[LoadedVariant, Tensors, str | None]:
        """Answer one request: the variant that answered, its outputs, and why the baseline answered a forced
        request (None otherwise); raises only for the client's bad input or a failing baseline."""
        fallback = routes.fallback
        if forced is not None:
            variant = forced
        else:
            name = routes.split.choose(routes.model, key)
            found = routes.variants.get(name)
            if found is None:
                self.fallback(routes, name, "unavailable")
                variant = fallback
            elif found.breaker.ejected and found is not fallback:
                self.fallback(routes, name, "ejected")
                variant = fallback
            else:
                variant = found
        outputs: Tensors | None = None
        candidate_error: tuple[LoadedVariant, float, BaseException] | None = None
        # In a shadow step every run goes through the pool: an inline run never yields to the event loop, and
        # the mirrors of earlier requests (on the shadow pool) need it to finish and free their slots.
        inline = routes.shadow is None
        forced_fallback: str | None = None
        if variant is not fallback:  # chosen or forced: the candidate's deadline, and the baseline if it fails
            outputs, latency_ms, cpu_ms, error = await self._call(variant, request.inputs, self._timeout_s,
                                                                  self._executor, inline)
            if error is None:
                variant.breaker.success()
            else:
                candidate_error = (variant, latency_ms, error)
                variant = fallback
        if outputs is None:
            outputs, latency_ms, cpu_ms, error = await self._call(variant, request.inputs, None, self._executor,
                                                                  inline)
            if isinstance(error, RunnerBadInput):
                raise InvalidInput(str(error))  # the baseline refuses it too: the client's fault, not the candidate's
            if isinstance(error, NonFiniteOutput):
                raise InvalidInput(f"model {routes.model!r} (version {variant.name!r}) answered NaN or ±Inf in "
                                   f"output {error.output!r} for this input, which V2 cannot carry: {NON_FINITE_HINT}")
            if candidate_error is not None:
                failed, failed_ms, failed_error = candidate_error
                self._failed(routes, failed, request, request_id, ts, failed_ms, failed_error)
                reason = "timeout" if isinstance(failed_error, RunnerTimeout) else "error"
                self.fallback(routes, failed.name, reason)
                if forced is not None:
                    forced_fallback = reason
            if error is not None:
                self._failed(routes, variant, request, request_id, ts, latency_ms, error)
                raise Unavailable(f"variant {variant.name!r} of model {routes.model!r} failed: {error}")
        assert outputs is not None
        shadow = routes.shadow
        mirrored = (forced is None and variant is fallback and shadow is not None and shadow is not fallback
                    and not shadow.breaker.ejected)
        if mirrored and self._shadow_inflight >= self._shadow_max:
            mirrored = False
            self.shadow_skipped += 1
            self._metrics.shadow_skipped.labels(routes.model, shadow.name).inc()  # type: ignore[union-attr]
        record = RequestRecord(routes.model, variant.name, ts, routes.rollout_id, routes.step, request_id,
                               latency_ms, (_perf() - start) * 1000.0, "ok", cpu_ms, request.batch_size, False,
                               outputs, not mirrored)
        self._recorder.add(record)
        if mirrored:
            assert shadow is not None
            self._shadow_inflight += 1
            task = asyncio.create_task(self._mirror(routes, shadow, request, record))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return variant, outputs, forced_fallback

    async def _mirror(self, routes: ModelRoutes, variant: LoadedVariant, request: InferRequest,
                      pair: RequestRecord) -> None:
        start = _perf()
        try:
            outputs, latency_ms, cpu_ms, error = await self._call(variant, request.inputs, self._timeout_s,
                                                                  self._shadow_executor, inline=False)
        finally:
            self._shadow_inflight -= 1
        total_ms = (_perf() - start) * 1000.0
        if error is not None:
            status, outputs = self._count_failure(routes, variant, error), None
        else:
            variant.breaker.success()
            status = "ok"
        # The shadow record carries the pair's prediction record (both sides), even when the candidate failed.
        self._recorder.add(RequestRecord(
            routes.model, variant.name, pair.ts, routes.rollout_id, routes.step, pair.request_id, latency_ms,
            total_ms, status, cpu_ms, request.batch_size, True, outputs, True, pair=pair))

    async def drain(self, timeout_s: float = 5.0) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout_s)

    @property
    def shadow_inflight(self) -> int:
        return self._shadow_inflight

    def describe(self) -> dict[str, Any]:
        return {"shadow_inflight": self._shadow_inflight, "shadow_skipped": self.shadow_skipped,
                "fallbacks": self.fallbacks}
