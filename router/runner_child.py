"""The subprocess runner's child: `python -m router.runner_child MODEL.onnx THREADS [SHA256]`.

It measures its resident memory before and after loading the model, says hello with the signature and
the sha256 of the bytes it loaded, then answers run frames on stdin/stdout until stdin closes. Given a
SHA256 it loads the file only if its bytes hash to it, and else says why it refuses (`refused`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np  # noqa: F401  (imported before the baseline measurement: runtime cost, not model cost)
import onnxruntime  # noqa: F401

from modelroll.errors import Tampered
from modelroll.integrity import read_verified
from modelroll.residency import prefault_libraries
from router import frames
from router.runners import is_bad_input, ort_session, prepare_string_inputs, rss_bytes, warmup_inputs
from router.tensors import Signature


def main(argv: list[str]) -> int:
    path, threads = Path(argv[0]), int(argv[1])
    expected = argv[2] if len(argv) > 2 else None
    out_fd, in_fd = sys.stdout.fileno(), sys.stdin.fileno()
    sys.stdout = sys.stderr  # nothing but frames may reach the parent's pipe
    prefault_libraries()  # the runtime's code is its fixed cost, not the model's (modelroll/residency.py)
    rss_before = rss_bytes()
    try:
        data, sha256 = read_verified(path, expected)
        session = ort_session(data, threads)
        del data
        signature = Signature.from_onnx_session(session)
    except Tampered as exc:
        frames.write_all(out_fd, frames.pack({"ok": False, "refused": True, "error": exc.message}))
        return 1
    except Exception as exc:
        frames.write_all(out_fd, frames.pack({"ok": False, "error": f"cannot load {path}: {exc}"}))
        return 1
    names = [t.name for t in signature.outputs]
    strings = frozenset(t.name for t in signature.inputs if t.datatype == "BYTES")
    try:
        session.run(names, warmup_inputs(signature))
    except Exception as exc:
        print(f"warm-up of {path} failed: {exc}", file=sys.stderr)
    frames.write_all(out_fd, frames.pack({
        "ok": True, "signature": signature.to_dict(), "sha256": sha256, "rss_before": rss_before,
        "rss_after": rss_bytes(),
    }))
    while True:
        try:
            meta, data = frames.read(in_fd)
        except frames.FrameClosed:
            return 0
        inputs = prepare_string_inputs(frames.unpack_tensors(meta, data), strings)
        start, wall_start = time.thread_time(), time.perf_counter()
        try:
            values = session.run(names, inputs)
        except Exception as exc:
            frames.write_all(out_fd, frames.pack({"ok": False, "bad_input": is_bad_input(exc),
                                                  "error": f"model error: {exc}"}))
            continue
        model_ms = (time.perf_counter() - wall_start) * 1000.0
        cpu_ms = (time.thread_time() - start) * 1000.0
        frames.write_all(out_fd, frames.pack({"ok": True, "cpu_ms": cpu_ms, "model_ms": model_ms},
                                             dict(zip(names, values, strict=True))))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
