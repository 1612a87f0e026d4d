"""Fast in-process models run on the event loop itself, guarded by a watchdog.

Handing a run to a worker thread and back costs ~30 µs (a queue put, a futex wake, a self-pipe
write to wake the loop): a quarter of a small model's whole request. A variant whose runs stay
under `max_ms` of CPU therefore runs inline; one run over it sends the variant back to the thread
pool for a cool-down, so a slow model never holds the loop twice in a row. A run that hangs is ended
by the watchdog thread through onnxruntime's terminate flag after `stall_s` (or the caller's
shorter deadline): the loop is never blocked for longer, and the caller retries on the pool.
Shadow runs, and every run of a shadow step, stay on the pools: an inline run never yields to the
loop, which the shadow mirrors need to finish and free their slots.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from router.runners import InlineRunner, RunnerTimeout, Tensors

_WALL_SLACK = 5.0
_CPU_EVERY = 8
_thread_time = time.thread_time
_monotonic = time.monotonic
_perf = time.perf_counter


class Watchdog:
    """One daemon thread that ends the inline run in progress when it outlives its deadline.

    Arming and disarming are two attribute writes on the event loop (no lock, no syscall): only
    the loop runs inline models, so at most one run is armed at a time.
    """

    def __init__(self, period_s: float = 0.005) -> None:
        self._period_s = period_s
        self._options: Any = None
        self._deadline = 0.0
        self.terminated = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="modelroll-inline-watchdog", daemon=True)
        self._thread.start()

    def arm(self, run_options: Any, deadline: float) -> None:
        self._deadline = deadline
        self._options = run_options

    def disarm(self) -> None:
        self._options = None

    def _loop(self) -> None:
        while not self._stop.wait(self._period_s):
            options = self._options
            if options is not None and _monotonic() > self._deadline:
                options.terminate = True
                self.terminated += 1
                self._options = None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


class InlineGate:
    """Decides per call whether an in-process variant runs on the loop, and runs it there."""

    def __init__(self, runner: InlineRunner, watchdog: Watchdog, *, max_ms: float, stall_s: float,
                 cooldown_s: float = 2.0) -> None:
        import onnxruntime as ort

        self._runner = runner
        self._watchdog = watchdog
        self._max_s = max_ms / 1000.0
        self._stall_s = stall_s
        self._cooldown_s = cooldown_s
        self._run_options_type = ort.RunOptions
        self._slow_until = 0.0 if runner.warmup_s <= self._max_s else _monotonic() + cooldown_s
        self.inline_runs = 0
        self.cooldowns = 0
        self._cpu_per_wall = 1.0

    @property
    def open(self) -> bool:
        return _monotonic() >= self._slow_until

    def run(self, inputs: Tensors, timeout_s: float | None) -> tuple[Tensors, float, float]:
        """Outputs, wall ms and CPU ms of one run on the calling thread; raises the runner's errors, and
        `RunnerTimeout` when the watchdog had to end the run.

        The thread's CPU clock is a system call (not in the vDSO; ~5 µs each on this project's VMs), so it
        is read around one run in `_CPU_EVERY`; the others' CPU is their wall time times the last measured
        CPU/wall ratio of this model.
        """
        options = self._run_options_type()
        measured = self.inline_runs % _CPU_EVERY == 0
        cpu_start = _thread_time() if measured else 0.0
        start = _perf()
        limit_s = self._stall_s if timeout_s is None else min(timeout_s, self._stall_s)
        self._watchdog.arm(options, _monotonic() + limit_s)
        try:
            outputs = self._runner.infer(inputs, options)
        except Exception as exc:
            if options.terminate:
                self._slow_until = _monotonic() + self._cooldown_s
                self.cooldowns += 1
                raise RunnerTimeout(f"no answer within {limit_s}s on the event loop (ended by its watchdog)") from exc
            raise
        finally:
            self._watchdog.disarm()
        elapsed_s = _perf() - start
        if measured:
            cpu_s = _thread_time() - cpu_start
            self._cpu_per_wall = min(1.0, cpu_s / elapsed_s) if elapsed_s > 0 else 1.0
        else:
            cpu_s = elapsed_s * self._cpu_per_wall
        self.inline_runs += 1
        # Judged on the model's CPU time: a preempted run on a busy host is not a slow model. The wall
        # bound catches what CPU time misses (work on onnxruntime's other threads, waiting on memory).
        if cpu_s > self._max_s or elapsed_s > self._max_s * _WALL_SLACK:
            self._slow_until = _monotonic() + self._cooldown_s
            self.cooldowns += 1
        return outputs, elapsed_s * 1000.0, cpu_s * 1000.0
