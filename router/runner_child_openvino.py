"""The subprocess runner's child for OpenVINO variants: `python -m router.runner_child_openvino ARTIFACT THREADS
[SHA256]`, the same frames and hello as onnxruntime's child (router/runner_child.py).

openvino and its CPU plugin are loaded before the memory reading the variant's figure starts from (the runtime's
fixed cost, like onnxruntime's import in the other child); the model is compiled from the bytes the integrity
check read, and refused (`refused`) when they do not hash to SHA256.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from modelroll.errors import ModelrollError, Tampered
from modelroll.residency import prefault_libraries
from router import frames
from router.runner_openvino import InferCall, compile_artifact, is_bad_input, load_runtime, read_artifact, signature_of
from router.runners import rss_bytes, warmup_inputs


def main(argv: list[str]) -> int:
    path, threads = Path(argv[0]), int(argv[1])
    expected = argv[2] if len(argv) > 2 else None
    out_fd, in_fd = sys.stdout.fileno(), sys.stdin.fileno()
    sys.stdout = sys.stderr  # nothing but frames may reach the parent's pipe
    try:
        core = load_runtime(threads)
    except Exception as exc:
        frames.write_all(out_fd, frames.pack({"ok": False, "error": f"openvino cannot start: {exc}"}))
        return 1
    prefault_libraries()  # the runtime's code is its fixed cost, not the model's (modelroll/residency.py)
    rss_before = rss_bytes()
    try:
        data, sha256 = read_artifact(path, expected)  # kept: the compiled model's weights live in it
        compiled = compile_artifact(core, data, threads)
        signature = signature_of(compiled)
    except Tampered as exc:
        frames.write_all(out_fd, frames.pack({"ok": False, "refused": True, "error": exc.message}))
        return 1
    except Exception as exc:
        reason = exc.message if isinstance(exc, ModelrollError) else str(exc)
        frames.write_all(out_fd, frames.pack({"ok": False, "error": f"cannot load {path}: {reason}"}))
        return 1
    call = InferCall(compiled, signature)
    try:
        call(warmup_inputs(signature))
    except Exception as exc:
        print(f"warm-up of {path} failed: {exc}", file=sys.stderr)
    frames.write_all(out_fd, frames.pack({
        "ok": True, "signature": signature.to_dict(), "sha256": sha256, "rss_before": rss_before,
        "rss_after": rss_bytes(),
    }))
    while True:
        try:
            meta, payload = frames.read(in_fd)
        except frames.FrameClosed:
            return 0
        inputs = frames.unpack_tensors(meta, payload)
        start, wall_start = time.thread_time(), time.perf_counter()
        try:
            outputs = call(inputs)
        except Exception as exc:
            frames.write_all(out_fd, frames.pack({"ok": False, "bad_input": is_bad_input(exc),
                                                  "error": f"model error: {exc}"}))
            continue
        model_ms = (time.perf_counter() - wall_start) * 1000.0
        cpu_ms = (time.thread_time() - start) * 1000.0
        frames.write_all(out_fd, frames.pack({"ok": True, "cpu_ms": cpu_ms, "model_ms": model_ms}, outputs))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
