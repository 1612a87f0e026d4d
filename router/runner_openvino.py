"""OpenVINO runners: a variant built for OpenVINO, served through the same `Runner` interface as onnxruntime's.

Inline, the compiled model runs in the router's process; subprocess (the default), in its own
`python -m router.runner_child_openvino`, which measures its own memory exactly as onnxruntime's child does.
Both load the IR out of the very bytes the integrity check read (the stored folder's tar, or an IR folder given
as is), with the settings its manifest records, and refuse with what to do when openvino is not installed or
is older than the version the artifact was built with.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from modelroll import openvino_ir, runtimes
from modelroll.errors import ModelrollError, NotFound
from modelroll.integrity import check
from router.runner_subprocess import SubprocessRunner
from router.runners import Runner, RunnerBadInput, RunnerError, Tensors, read_for_runner, warmup_inputs
from router.tensors import Signature, TensorSpec

log = logging.getLogger(__name__)

# OpenVINO element types -> V2 datatypes.
OV_TYPES = {"boolean": "BOOL", "u8": "UINT8", "u16": "UINT16", "u32": "UINT32", "u64": "UINT64", "i8": "INT8",
            "i16": "INT16", "i32": "INT32", "i64": "INT64", "f16": "FP16", "f32": "FP32", "f64": "FP64"}


class _Sink(io.BytesIO):
    """write_tree_tar's sink: keeps the bytes and their hash."""

    def __init__(self) -> None:
        super().__init__()
        self._hash = hashlib.sha256()

    def write(self, data: Any) -> int:
        self._hash.update(data)
        return super().write(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def read_artifact(path: Path, sha256: str | None) -> tuple[bytearray, str]:
    """The artifact's bytes and sha256, checked against `sha256` when recorded: a stored folder's tar, or an IR
    folder given as a folder (tarred in memory exactly as the store would, so its hash is the store's). Writable,
    so the runtime can use the weights where they are instead of copying them."""
    path = Path(path)
    if path.is_dir():
        from modelroll.artifacts import write_tree_tar  # only for a folder given as is (the store holds tars)

        sink = _Sink()
        write_tree_tar(path, sink)  # type: ignore[arg-type]
        data, actual = bytearray(sink.getbuffer()), sink.hexdigest()
    else:
        try:
            with path.open("rb") as stream:
                data = bytearray(os.fstat(stream.fileno()).st_size)
                stream.readinto(data)
        except FileNotFoundError:
            raise NotFound(f"artifact file {path} is gone: re-register the model") from None
        actual = hashlib.sha256(data).hexdigest()
    if sha256 is not None:
        check(actual, sha256)
    return data, actual


def _dims(port: Any) -> tuple[int, ...]:
    return tuple(d.get_length() if d.is_static else -1 for d in port.get_partial_shape())


def signature_of(compiled: Any) -> Signature:
    def specs(ports: Any) -> tuple[TensorSpec, ...]:
        out = []
        for port in ports:
            kind = port.get_element_type().get_type_name()
            if kind not in OV_TYPES:
                raise ValueError(f"tensor {port.get_any_name()!r} has type {kind}, which the router cannot serve")
            out.append(TensorSpec(port.get_any_name(), OV_TYPES[kind], _dims(port)))
        return tuple(out)

    return Signature(specs(compiled.inputs), specs(compiled.outputs))


def load_runtime(threads: int) -> Any:
    """Import openvino and load its CPU plugin (a one-operation model compiled and run): the runtime's fixed cost,
    paid before a child measures its memory. Returns the Core to compile with (kept: the plugin stays loaded)."""
    import openvino as ov

    core = ov.Core()
    parameter = ov.opset13.parameter([1], np.float32)
    tiny = core.compile_model(ov.Model([ov.opset13.relu(parameter)], [parameter]), "CPU",
                              openvino_ir.compile_config({}, threads))
    tiny.create_infer_request().infer([np.zeros(1, np.float32)])
    return core


def compile_artifact(core: Any, data: bytearray, threads: int) -> Any:
    """The compiled model of a stored IR folder's bytes, with its manifest's settings. The weights are used where
    they lie in `data`: the caller keeps `data` alive as long as the compiled model."""
    import openvino as ov

    xml, weights, manifest = openvino_ir.members(data)
    model = core.read_model(xml.decode(), ov.Tensor(np.frombuffer(weights, dtype=np.uint8), shared_memory=True))
    return core.compile_model(model, "CPU", openvino_ir.compile_config(manifest.config, threads))


def is_bad_input(exc: BaseException) -> bool:
    """OpenVINO reports inputs the model cannot take (a size its signature left open) as shape errors."""
    text = str(exc).lower()
    return isinstance(exc, (TypeError, ValueError)) or "shape" in text or "dimension" in text


class InferCall:
    """Run a compiled model from any thread: one infer request per thread (a request is not thread-safe)."""

    def __init__(self, compiled: Any, signature: Signature) -> None:
        self.compiled = compiled
        self.names = [t.name for t in signature.outputs]
        self._ports = list(compiled.outputs)
        self._local = threading.local()

    def __call__(self, inputs: Tensors) -> Tensors:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        result = request.infer(inputs)
        return {name: np.asarray(result[port]) for name, port in zip(self.names, self._ports, strict=True)}


class OpenVinoInlineRunner(Runner):
    """A compiled OpenVINO model inside the router process. Like the inline onnxruntime runner it cannot tell
    its model's own memory from the router's (it reports none)."""

    kind = "inline"

    def __init__(self, path: Path, threads: int = 1, sha256: str | None = None) -> None:
        data, self.sha256 = read_for_runner(path, sha256, read_artifact)
        try:
            import openvino as ov

            self.compiled = compile_artifact(ov.Core(), data, threads)
            self.signature = signature_of(self.compiled)
        except ModelrollError as exc:
            raise RunnerError(f"cannot load {path}: {exc.message}") from exc
        except Exception as exc:
            raise RunnerError(f"openvino cannot load {path}: {exc}") from exc
        self._data = data  # the compiled model's weights live in it
        self._call = InferCall(self.compiled, self.signature)
        try:
            self._call(warmup_inputs(self.signature))
        except Exception as exc:  # a model may reject zeros; it is still servable
            log.warning("warm-up of %s failed: %s", path, exc)

    def run(self, inputs: Tensors, timeout_s: float | None = None) -> tuple[Tensors, float, float | None]:
        start = time.thread_time()
        try:
            outputs = self._call(inputs)
        except Exception as exc:
            if is_bad_input(exc):
                raise RunnerBadInput(f"the model refused the inputs: {exc}") from exc
            raise RunnerError(f"model error: {exc}") from exc
        return outputs, (time.thread_time() - start) * 1000.0, None


class OpenVinoSubprocessRunner(SubprocessRunner):
    """The subprocess runner with an OpenVINO child: same frames, restarts, integrity and exact memory."""

    child_module = "router.runner_child_openvino"


def load_openvino(path: Path, kind: str, threads: int, *, model: str, name: str, sha256: str | None,
                  built_with: str | None, on_refused: Callable[[str], None] | None = None) -> Runner:
    """The runner of an OpenVINO variant, after checking that this router can run what it was built with
    (Unavailable, with what to do, when it cannot: the variant then cannot serve and says why)."""
    runtimes.require(openvino_ir.FORMAT, built_with, what=f"variant {name!r} of model {model!r}")
    if kind == "subprocess":
        return OpenVinoSubprocessRunner(Path(path), threads, sha256=sha256, on_refused=on_refused)
    return OpenVinoInlineRunner(Path(path), threads, sha256=sha256)
