"""One `Runner` interface for every way a variant can run; the inline onnxruntime runner lives here.

Runners are called from worker threads, except that a fast inline model may run on the event loop
itself (router/inline.py). `run` returns the outputs and
the runner's CPU milliseconds; failures raise `RunnerError` (or `RunnerTimeout`), which the
router turns into a fallback to the baseline for candidates.
"""

from __future__ import annotations

import abc
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from modelroll.errors import NotFound, Tampered
from modelroll.integrity import read_verified
from router.tensors import Signature

log = logging.getLogger(__name__)

_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
Tensors = dict[str, np.ndarray[Any, Any]]


class RunnerError(Exception):
    """The variant failed to answer (crash, model error, remote error)."""


class RunnerTimeout(RunnerError):
    """The variant did not answer within its deadline."""


class RunnerRefused(RunnerError):
    """The variant's artifact failed its integrity check (`modelroll.integrity`): permanent, never retried."""


class RunnerBadInput(RunnerError):
    """The model refused the inputs (e.g. a size its signature left open): the client's fault, a 400."""


def is_bad_input(exc: BaseException) -> bool:
    """onnxruntime raises InvalidArgument for inputs the model cannot take."""
    return type(exc).__name__ == "InvalidArgument"


def rss_bytes(pid: int | None = None) -> int:
    """Resident memory of a process (this one by default) from /proc, in bytes."""
    path = f"/proc/{pid}/statm" if pid else "/proc/self/statm"
    with open(path, "rb") as fh:
        return int(fh.read().split()[1]) * _PAGE_BYTES


class Runner(abc.ABC):
    """A loaded variant: its signature, a thread-safe `run`, its memory gauge."""

    kind: str = ""
    signature: Signature
    # Whether `memory()` measures the model's own resident memory exactly. A runner that cannot (its model
    # shares the router's process, or runs on another machine) says so, and the memory gate never decides on it.
    measures_memory: bool = False
    # Set when the runner can no longer serve, for good: a restart found its artifact changed (integrity check).
    refused: str = ""

    @abc.abstractmethod
    def run(self, inputs: Tensors, timeout_s: float | None = None) -> tuple[Tensors, float, float | None]:
        """Outputs by name, the CPU milliseconds the model took, and its own wall milliseconds when the runner
        can time the model apart from the transport (a subprocess); None: the caller's timing is the model's."""

    def memory(self) -> tuple[int, int] | None:
        """(model cost, absolute) resident bytes measured now, or None: no reading (a runner that does not
        `measures_memory`, or one whose process is being restarted)."""
        return None

    def close(self) -> None:
        return None


def warmup_inputs(signature: Signature) -> Tensors:
    """Zeros of each input's shape, any-size dimensions set to 1 (used to measure and warm a model)."""
    out: Tensors = {}
    for spec in signature.inputs:
        shape = tuple(1 if d < 0 else d for d in spec.shape)
        if spec.datatype == "BYTES":
            out[spec.name] = np.full(shape, "", dtype=object)
        else:
            out[spec.name] = np.zeros(shape, dtype=spec.dtype)
    return out


def ort_session(model: Path | bytes, threads: int) -> Any:
    """A CPU session of the model at a path, or of the model's bytes (the ones the integrity check read)."""
    import onnxruntime as ort

    ort.set_default_logger_severity(4)  # model errors are reported by the router, not printed by onnxruntime
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 4
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


Data = TypeVar("Data", bytes, bytearray)


def read_for_runner(path: Path, sha256: str | None,
                    read: Callable[[Path, str | None], tuple[Data, str]]) -> tuple[Data, str]:
    """An artifact's bytes and sha256, read by `read` for a runner: a hash mismatch refuses the variant for good
    (RunnerRefused), a file that cannot be read is an error (RunnerError)."""
    try:
        return read(path, sha256)
    except Tampered as exc:
        raise RunnerRefused(exc.message) from exc
    except (NotFound, OSError) as exc:
        raise RunnerError(f"cannot read {path}: {exc}") from exc


def prepare_string_inputs(inputs: Tensors, string_inputs: frozenset[str]) -> Tensors:
    """onnxruntime wants `str` in string tensors; the protocol carries `bytes`."""
    if not string_inputs:
        return inputs
    fixed = dict(inputs)
    for name in string_inputs:
        arr = fixed[name]
        flat = [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in arr.reshape(-1)]
        fixed[name] = np.array(flat, dtype=object).reshape(arr.shape)
    return fixed


class InlineRunner(Runner):
    """An onnxruntime session inside the router process (the fastest runner), built from the bytes the
    integrity check read (`sha256`: the recorded hash; None pins the file's hash at this load).

    Its model shares the router's resident memory with every other variant and thread, so the
    model's own cost cannot be measured here (growth around loading is an estimate that other
    threads' allocations blur): it reports none, and the memory gate needs the subprocess runner
    or the optimizer's offline figure.
    """

    kind = "inline"

    def __init__(self, path: Path, threads: int = 1, sha256: str | None = None) -> None:
        data, self.sha256 = read_for_runner(path, sha256, read_verified)
        try:
            self.session = ort_session(data, threads)
        except Exception as exc:
            raise RunnerError(f"onnxruntime cannot load {path}: {exc}") from exc
        del data
        self.signature = Signature.from_onnx_session(self.session)
        self._output_names = [t.name for t in self.signature.outputs]
        self._string_inputs = frozenset(t.name for t in self.signature.inputs if t.datatype == "BYTES")
        self.warmup_s = float("inf")  # unknown: a model that rejects zeros is never run on the event loop
        try:
            warm = warmup_inputs(self.signature)
            self.session.run(self._output_names, warm)
            start = time.perf_counter()
            self.session.run(self._output_names, warm)
            self.warmup_s = time.perf_counter() - start
        except Exception as exc:  # a model may reject zeros; it is still servable
            log.warning("warm-up of %s failed: %s", path, exc)

    def run(self, inputs: Tensors, timeout_s: float | None = None) -> tuple[Tensors, float, float | None]:
        start = time.thread_time()
        outputs = self.infer(inputs)
        return outputs, (time.thread_time() - start) * 1000.0, None

    def infer(self, inputs: Tensors, run_options: Any = None) -> Tensors:
        """The outputs alone (no timing): the event loop's inline runs time themselves."""
        feed = prepare_string_inputs(inputs, self._string_inputs)
        try:
            values = self.session.run(self._output_names, feed, run_options)
        except Exception as exc:
            if is_bad_input(exc):
                raise RunnerBadInput(f"the model refused the inputs: {exc}") from exc
            raise RunnerError(f"model error: {exc}") from exc
        return dict(zip(self._output_names, values, strict=True))
