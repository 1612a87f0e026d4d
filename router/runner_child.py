"""The subprocess runner's child: `python -m router.runner_child MODEL.onnx THREADS [SHA256]`.

It measures its resident memory before and after loading the model, says hello with the signature and
the sha256 of the bytes it loaded, then answers run frames on stdin/stdout until stdin closes. Given a
SHA256 it loads the file only if its bytes hash to it, and else says why it refuses (`refused`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np  # noqa: F401  (imported before the baseline measurement: runtime cost, not model cost)
import onnxruntime  # noqa: F401

from modelroll.errors import Tampered
from modelroll.integrity import read_verified
from modelroll.residency import prefault_libraries
from router import frames
from router.child_loop import serve
from router.runners import is_bad_input, ort_session, prepare_string_inputs, rss_bytes
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
    return serve(out_fd, in_fd, path, signature, sha256, rss_before,
                 run=lambda inputs: dict(zip(names, session.run(names, inputs), strict=True)),
                 bad_input=is_bad_input, prepare=lambda inputs: prepare_string_inputs(inputs, strings))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
