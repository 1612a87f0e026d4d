"""Build an OpenVINO candidate in a fresh process (`python -m optimizer.ov_child`, the spec on stdin).

The parent (`build_in_child`) writes the calibration batches beside the spec and reads the child's result;
openvino and nncf are imported in the child only, and what they print (NNCF's progress bars and INFO lines)
goes into the parent's log instead of the terminal. A crash or hang of the converter fails the candidate with
its reason, never the job.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modelroll.errors import InvalidInput
from optimizer.evaluate import run_child

BUILD_TIMEOUT_S = 1800.0


def _save_batches(path: Path, batches: Sequence[Mapping[str, np.ndarray]]) -> None:
    arrays = {f"{index}/{name}": array for index, batch in enumerate(batches) for name, array in batch.items()}
    np.savez(path, **arrays)  # type: ignore[arg-type]


def _load_batches(path: Path) -> list[dict[str, np.ndarray]]:
    batches: dict[int, dict[str, np.ndarray]] = {}
    with np.load(path, allow_pickle=False) as archive:
        for key in archive.files:
            index, name = key.split("/", 1)
            batches.setdefault(int(index), {})[name] = archive[key]
    return [batches[i] for i in sorted(batches)]


def build_in_child(technique: str, options: Mapping[str, Any], onnx_path: Path,
                   calibration: Sequence[Mapping[str, np.ndarray]], out_dir: Path, *, ignored: Sequence[str] = (),
                   recipe: str = "", threads: int = 1, timeout_s: float = BUILD_TIMEOUT_S,
                   stop: threading.Event | None = None) -> dict[str, Any]:
    """Build `out_dir/openvino/` in a fresh process; returns what `ov_quantize.build` reported (JSON-able).
    InvalidInput with the child's reason when it could not build."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    calibration_path = out_dir / "calibration.npz"
    _save_batches(calibration_path, calibration)
    spec = {"technique": technique, "options": dict(options), "onnx_path": str(onnx_path),
            "calibration_path": str(calibration_path), "out_dir": str(out_dir / "openvino"),
            "ignored": list(ignored), "recipe": recipe, "result_path": str(out_dir / "build.json")}
    result = run_child(spec, timeout_s, threads, stop, module="optimizer.ov_child", label=recipe, what="build")
    calibration_path.unlink(missing_ok=True)
    if not result.get("ok"):
        raise InvalidInput(f"{recipe or technique}: OpenVINO build failed: {result.get('error')}")
    return result


def main() -> int:
    spec = json.loads(sys.stdin.read())
    from optimizer.measure import die_with_parent

    die_with_parent(spec.get("parent_pid"))
    try:
        from optimizer.ov_quantize import build

        built = build(spec["technique"], spec["options"], Path(spec["onnx_path"]),
                      _load_batches(Path(spec["calibration_path"])), Path(spec["out_dir"]),
                      ignored=spec["ignored"], recipe=spec["recipe"])
        result: dict[str, Any] = {
            "ok": True, "folder": str(built.folder), "kind": built.kind, "kind_why": built.kind_why,
            "config": dict(built.config), "quantized_nodes": built.quantized_nodes,
            "compressed_weights": built.compressed_weights, "excluded_nodes": list(built.excluded_nodes),
            "embeddings": list(built.embeddings), "size_bytes_before": built.size_bytes_before,
            "size_bytes_after": built.size_bytes_after, "versions": dict(built.versions)}
        code = 0
    except InvalidInput as exc:
        result, code = {"ok": False, "error": exc.message}, 1
    except Exception as exc:  # every failure becomes the candidate's reason, written for the parent
        result, code = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}, 1
    Path(spec["result_path"]).write_text(json.dumps(result))
    return code


if __name__ == "__main__":
    sys.exit(main())
