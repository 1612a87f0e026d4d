"""What both subprocess runner children do once their model is loaded: warm it up, say hello (signature, sha256,
resident memory before and after the load), then answer run frames on stdin/stdout until stdin closes.
router/runner_child.py loads onnxruntime models, router/runner_child_openvino.py OpenVINO ones."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from router import frames
from router.runners import Tensors, rss_bytes, warmup_inputs
from router.tensors import Signature


def serve(out_fd: int, in_fd: int, path: Path, signature: Signature, sha256: str, rss_before: int,
          run: Callable[[Tensors], Tensors], bad_input: Callable[[BaseException], bool],
          prepare: Callable[[Tensors], Tensors] = lambda inputs: inputs) -> int:
    """`run` computes a call's outputs; `prepare` readies a request's decoded inputs for it (not the warm-up's)."""
    try:
        run(warmup_inputs(signature))
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
        inputs = prepare(frames.unpack_tensors(meta, payload))
        start, wall_start = time.thread_time(), time.perf_counter()
        try:
            outputs = run(inputs)
        except Exception as exc:
            frames.write_all(out_fd, frames.pack({"ok": False, "bad_input": bad_input(exc),
                                                  "error": f"model error: {exc}"}))
            continue
        model_ms = (time.perf_counter() - wall_start) * 1000.0
        cpu_ms = (time.thread_time() - start) * 1000.0
        frames.write_all(out_fd, frames.pack({"ok": True, "cpu_ms": cpu_ms, "model_ms": model_ms}, outputs))
