"""The subprocess runner's child for OpenVINO variants: `python -m router.runner_child_openvino ARTIFACT THREADS
[SHA256]`, the same frames and hello as onnxruntime's child (router/runner_child.py).

openvino and its CPU plugin are loaded before the memory reading the variant's figure starts from (the runtime's
fixed cost, like onnxruntime's import in the other child); the model is compiled from the bytes the integrity
check read, and refused (`refused`) when they do not hash to SHA256.
"""

from __future__ import annotations

import sys
from pathlib import Path

from modelroll.errors import ModelrollError, Tampered
from modelroll.residency import prefault_libraries
from router import frames
from router.child_loop import serve
from router.runner_openvino import InferCall, compile_artifact, is_bad_input, load_runtime, read_artifact, signature_of
from router.runners import rss_bytes


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
    return serve(out_fd, in_fd, path, signature, sha256, rss_before, run=InferCall(compiled, signature),
                 bad_input=is_bad_input)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
