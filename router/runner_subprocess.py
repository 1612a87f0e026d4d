"""Subprocess runner: the variant runs in its own `python -m router.runner_child` process.

A crash, a hang or a leak in the child cannot take the router down: a dead or late child
is killed and started again in the background while calls fail fast (the router falls back
to the baseline). Every start, restarts included, loads the model only after its bytes pass the integrity
check (the recorded sha256, else the hash pinned at the first start); a restart that fails it ends the
runner for good (`refused`, `on_refused`). Its memory is the child's own resident set, minus what it had
before loading.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from router import frames
from router.runners import Runner, RunnerBadInput, RunnerError, RunnerRefused, RunnerTimeout, Tensors, rss_bytes
from router.tensors import Signature

log = logging.getLogger(__name__)

_LOAD_TIMEOUT_S = 120.0


class SubprocessRunner(Runner):
    kind = "subprocess"
    measures_memory = True  # the child holds nothing but this one model
    child_module = "router.runner_child"  # onnxruntime's child; router/runner_openvino.py has OpenVINO's

    def __init__(self, path: Path, threads: int = 1, load_timeout_s: float = _LOAD_TIMEOUT_S, *,
                 sha256: str | None = None, on_refused: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.threads = threads
        self.load_timeout_s = load_timeout_s
        self.sha256 = sha256  # None: pinned to what the first child loaded
        self.on_refused = on_refused
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._rss_before = 0
        self._restarting = False
        self._closed = False
        self.restarts = 0
        self.signature = self._spawn()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _spawn(self) -> Signature:
        expected = [self.sha256] if self.sha256 is not None else []
        proc = subprocess.Popen(
            [sys.executable, "-m", self.child_module, str(self.path), str(self.threads), *expected],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True,
            cwd=str(Path(__file__).resolve().parent.parent),
        )
        assert proc.stdout is not None
        try:
            meta, _ = frames.read(proc.stdout.fileno(), time.monotonic() + self.load_timeout_s)
        except (frames.FrameTimeout, frames.FrameClosed) as exc:
            self._kill(proc)
            raise RunnerError(f"runner child for {self.path} did not start: {exc}") from exc
        if not meta.get("ok"):
            self._kill(proc)
            error = RunnerRefused if meta.get("refused") else RunnerError
            raise error(str(meta.get("error", "runner child failed to load the model")))
        self.sha256 = str(meta["sha256"])
        self._rss_before = int(meta["rss_before"])
        self._proc = proc
        return Signature.from_dict(meta["signature"])

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()

    def _restart_in_background(self, reason: str) -> None:
        # Called with self._lock held.
        proc, self._proc = self._proc, None
        if proc is not None:
            self._kill(proc)
        if self._restarting or self._closed:
            return
        self._restarting = True
        log.warning("runner child of %s is gone (%s); starting a new one", self.path, reason)
        threading.Thread(target=self._restart, name="runner-restart", daemon=True).start()

    def _restart(self) -> None:
        delay = 0.1
        while not self._closed:
            try:
                signature = self._spawn()
            except RunnerRefused as exc:
                self._refuse(exc)
                break
            except RunnerError as exc:
                log.error("restart of runner for %s failed: %s", self.path, exc)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            if signature.compatible_with(self.signature) is not None:
                log.error("runner for %s came back with another signature", self.path)
            self.restarts += 1
            break
        self._restarting = False

    def _refuse(self, exc: RunnerRefused) -> None:
        self.refused = str(exc)
        log.error("runner for %s refused for good: %s", self.path, exc)
        if self.on_refused is not None:
            try:
                self.on_refused(self.refused)
            except Exception:  # the owner's bug must not hide the refusal: it stays on `refused`
                log.exception("on_refused hook of the runner for %s failed", self.path)

    def run(self, inputs: Tensors, timeout_s: float | None = None) -> tuple[Tensors, float, float | None]:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        if not self._lock.acquire(timeout=-1 if timeout_s is None else timeout_s):
            raise RunnerTimeout(f"runner for {self.path.name} is busy past the {timeout_s}s deadline")
        try:
            proc = self._proc
            if self.refused:
                raise RunnerRefused(self.refused)
            if proc is None or proc.poll() is not None:
                if proc is not None:
                    self._restart_in_background(f"exit code {proc.returncode}")
                raise RunnerError(f"runner child for {self.path.name} is not running (restarting)")
            assert proc.stdin is not None and proc.stdout is not None
            try:
                frames.write_all(proc.stdin.fileno(), frames.pack({"op": "run"}, inputs))
                meta, data = frames.read(proc.stdout.fileno(), deadline)
            except frames.FrameTimeout:
                self._restart_in_background("timeout")
                raise RunnerTimeout(f"runner for {self.path.name} did not answer within {timeout_s}s") from None
            except frames.FrameClosed as exc:
                self._restart_in_background(str(exc))
                raise RunnerError(f"runner child for {self.path.name} died: {exc}") from None
        finally:
            self._lock.release()
        if not meta.get("ok"):
            error = RunnerBadInput if meta.get("bad_input") else RunnerError
            raise error(str(meta.get("error", "runner child failed")))
        model_ms = meta.get("model_ms")  # the model's own time: the pipe to the child is not the model's cost
        return frames.unpack_tensors(meta, data), float(meta.get("cpu_ms", 0.0)), \
            float(model_ms) if model_ms is not None else None

    def memory(self) -> tuple[int, int] | None:
        pid = self.pid
        if pid is None:
            return None
        try:
            total = rss_bytes(pid)
        except (FileNotFoundError, ProcessLookupError, OSError):
            return None
        return max(0, total - self._rss_before), total

    def close(self) -> None:
        self._closed = True
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is not None:
                if proc.stdin is not None:
                    proc.stdin.close()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=2)
                self._kill(proc)


def child_pids(runner: Runner) -> list[int]:
    """Pids of the runner's child processes (tests kill them to prove the router survives)."""
    pid = getattr(runner, "pid", None)
    return [pid] if isinstance(pid, int) and os.path.exists(f"/proc/{pid}") else []
