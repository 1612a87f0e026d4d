"""Run a recipe on a model source: torch steps (prune, drop-layers, distill), ONNX export, then the final step
(an onnxruntime quantization, or an OpenVINO conversion / quantization built in a fresh process).

Writes into the given folder only: `float.onnx` (after the torch steps, if any), `prepared.onnx`
(ORT-pre-processed, the graph quantization sees) and the candidate: `model.onnx`, or for OpenVINO the IR folder
`openvino/` (model.xml, model.bin, modelroll.json).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from modelroll.errors import InvalidInput
from modelroll.recipes import TECHNIQUES
from modelroll.runtimes import INSTALL_HINT, OPENVINO, installed_version
from optimizer.distill import distill
from optimizer.export import export_onnx
from optimizer.layers import drop_layers
from optimizer.prune import count_params, prune
from optimizer.quantize import QuantizeResult, prepare, quantize_int8_dynamic, quantize_int8_static, weight_nodes
from optimizer.recipes import Recipe, Step, parse_recipe
from optimizer.sensitivity import node_sensitivity
from optimizer.smooth import smooth
from optimizer.sources import ModelSource, torch_threads


@dataclass(frozen=True, slots=True)
class StepRecord:
    """What one step did, with its own figures (kept units, params, losses, quantized nodes...)."""

    step: str
    seconds: float
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Candidate:
    """A built candidate: its artifact (an ONNX file or an OpenVINO IR folder), the float ONNX model before the
    final step, and a record per step."""

    recipe: str
    model_path: Path
    float_path: Path
    records: tuple[StepRecord, ...]
    torch_model: nn.Module | None = None


def _need_torch(recipe_text: str, source: ModelSource, step: Step) -> nn.Module:
    if source.torch_model is None:
        raise InvalidInput(
            f"recipe {recipe_text!r}: {step.technique} works on the torch model, and {source.name!r} was given "
            "as an ONNX file only; use int8 / int8-static, or give the torch model"
        )
    return source.torch_model


def _run_torch_steps(label: str, steps: Sequence[Step], model: nn.Module, source: ModelSource,
                     records: list[StepRecord]) -> nn.Module:
    for step in steps:
        started = time.monotonic()
        options = step.options
        detail: dict[str, Any] = {"params_before": count_params(model)}
        if step.technique == "prune":
            pruned = prune(model, source.calibration, amount=options["amount"], heads=options["heads"])
            model, detail["kept"] = pruned.model, pruned.kept
        elif step.technique == "drop-layers":
            dropped = drop_layers(model, source.calibration, max_fraction=options["fraction"],
                                  max_output_change=options["max_change"])
            model = dropped.model
            detail.update(dropped=list(dropped.dropped), output_change=dropped.output_change,
                          layers_before=dropped.layers_before, layers_after=dropped.layers_after,
                          probes=[(p.round, p.layer, p.output_change) for p in dropped.probes])
        elif step.technique == "distill":
            tuned = distill(model, _need_torch(label, source, step), source.distill_feeds, steps=options["steps"],
                            max_seconds=options["seconds"], lr=options["lr"] or None)
            model = tuned.model
            detail.update(steps=tuned.steps, loss_before=tuned.loss_before, loss_after=tuned.loss_after)
        detail["params_after"] = count_params(model)
        records.append(StepRecord(str(step), time.monotonic() - started, detail))
    return model


def build_float(steps: Sequence[Step], source: ModelSource, out_dir: Path) -> tuple[Path, nn.Module | None,
                                                                                    list[StepRecord]]:
    """Apply the torch steps and export `out_dir/float.onnx`; with no torch step, the source file as is."""
    if not steps:
        return source.onnx_path, source.torch_model, []
    label = ",".join(str(s) for s in steps)
    model = _need_torch(label, source, steps[0])
    sample = source.calibration[0] if source.calibration else None
    if sample is None:
        raise InvalidInput(f"{source.name!r} has no calibration batch: torch steps need one to export the model")
    records: list[StepRecord] = []
    with torch_threads(1):
        model = _run_torch_steps(label, steps, model, source, records)
    started = time.monotonic()
    path = export_onnx(model, {k: v[:2] for k, v in sample.items()}, Path(out_dir) / "float.onnx",
                       output_name=source.output_name)
    records.append(StepRecord("export", time.monotonic() - started, {"size_bytes": path.stat().st_size}))
    return path, model, records


def quantize_step(step: Step, float_path: Path, source: ModelSource, out_dir: Path,
                  ranking: list[str] | None = None) -> tuple[Path, StepRecord, list[str]]:
    """Quantize `float_path` as `step` says into `out_dir/model.onnx` (OpenVINO: `out_dir/openvino/`); `exclude=N`
    keeps the N most sensitive weight nodes in float, ranked by measurement (pass `ranking` to reuse one).
    Returns the path, the record and the sensitivity ranking used (empty when not needed)."""
    out_dir = Path(out_dir)
    started = time.monotonic()
    options = step.options
    if TECHNIQUES[step.technique].runtime == OPENVINO:
        return _openvino_step(step, float_path, source, out_dir, ranking)
    if options["smooth"]:
        if not source.calibration:
            raise InvalidInput(f"{step}: smoothing needs calibration batches and {source.name!r} has none")
        smoothed = smooth(float_path, out_dir / "smoothed.onnx", source.calibration, alpha=options["smooth"])
        float_path = smoothed.output_path
    prepared = prepare(float_path, out_dir / "prepared.onnx")
    exclude_count = options["exclude"]
    if step.technique == "int8-static" and not source.calibration:
        raise InvalidInput(f"int8-static needs calibration batches and {source.name!r} has none: use int8")

    def run(dst: Path, excluded: Sequence[str]) -> QuantizeResult:
        if step.technique == "int8":
            return quantize_int8_dynamic(prepared, dst, per_channel=options["per_channel"],
                                         nodes_to_exclude=excluded, pre_process=False)
        return quantize_int8_static(prepared, dst, source.calibration, method=options["method"],
                                    per_channel=options["per_channel"], nodes_to_exclude=excluded,
                                    pre_process=False)

    ranked = list(ranking or [])
    if exclude_count and not ranked:
        full = run(out_dir / "all-int8.onnx", ())
        ranked = [s.node for s in node_sensitivity(prepared, full.output_path, source.calibration)]
        full.output_path.unlink()
    if exclude_count > len(weight_nodes(prepared)):
        raise InvalidInput(f"{step}: exclude={exclude_count} is more than the {len(weight_nodes(prepared))} "
                           "weight nodes of the model")
    result = run(out_dir / "model.onnx", ranked[:exclude_count])
    detail = {"quantized_nodes": result.quantized_nodes, "excluded_nodes": list(result.excluded_nodes),
              "int8_initializers": result.int8_initializers, "size_bytes_before": result.size_bytes_before,
              "size_bytes_after": result.size_bytes_after}
    return result.output_path, StepRecord(str(step), time.monotonic() - started, detail), ranked


def _sensitivity_ranking(prepared: Path, source: ModelSource, out_dir: Path) -> list[str]:
    """Weight nodes of `prepared`, most sensitive to INT8 first (measured with onnxruntime's dynamic INT8: the
    ranking the back-off uses for every runtime)."""
    full = quantize_int8_dynamic(prepared, out_dir / "all-int8.onnx", pre_process=False)
    ranked = [s.node for s in node_sensitivity(prepared, full.output_path, source.calibration)]
    full.output_path.unlink()
    return ranked


def _openvino_step(step: Step, float_path: Path, source: ModelSource, out_dir: Path,
                   ranking: list[str] | None) -> tuple[Path, StepRecord, list[str]]:
    """The OpenVINO candidate of `float_path`, built in a fresh process from `prepared.onnx` (whose node names the
    sensitivity ranking uses: `exclude=N` keeps those N weight nodes in float)."""
    from optimizer.ov_child import build_in_child

    for package in ("openvino", "nncf"):  # the build child imports both; say so before it starts
        if installed_version(package) is None:
            raise InvalidInput(f"recipe step {str(step)!r} builds an OpenVINO candidate with {package}, which is not "
                               f"installed in this worker: {INSTALL_HINT[OPENVINO]}")
    started = time.monotonic()
    options = step.options
    prepared = prepare(float_path, out_dir / "prepared.onnx")
    exclude_count = int(options.get("exclude", 0))
    ranked = list(ranking or [])
    if exclude_count and not ranked:
        ranked = _sensitivity_ranking(prepared, source, out_dir)
    if exclude_count > len(weight_nodes(prepared)):
        raise InvalidInput(f"{step}: exclude={exclude_count} is more than the {len(weight_nodes(prepared))} "
                           "weight nodes of the model")
    if step.technique == "ov-int8" and not source.calibration:
        raise InvalidInput(f"ov-int8 needs calibration batches and {source.name!r} has none: use ov-weights")
    built = build_in_child(step.technique, options, prepared, source.calibration, out_dir,
                           ignored=ranked[:exclude_count], recipe=str(step))
    detail = {key: built[key] for key in ("kind", "kind_why", "quantized_nodes", "compressed_weights",
                                          "excluded_nodes", "embeddings", "size_bytes_before", "size_bytes_after")}
    detail["runtime"] = f"openvino {built['versions']['openvino']}"
    detail["settings"] = built["config"]
    detail["nncf"] = built["versions"].get("nncf", "")
    return Path(built["folder"]), StepRecord(str(step), time.monotonic() - started, detail), ranked


def build(recipe: Recipe | str, source: ModelSource, out_dir: Path) -> Candidate:
    """Build the candidate `recipe` describes from `source` into `out_dir` (created if missing)."""
    recipe = parse_recipe(recipe) if isinstance(recipe, str) else recipe
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    float_path, model, records = build_float(recipe.torch_steps, source, out_dir)
    quantization = recipe.quantization
    if quantization is None:
        return Candidate(str(recipe), float_path, float_path, tuple(records), model)
    path, record, _ = quantize_step(quantization, float_path, source, out_dir)
    return Candidate(str(recipe), path, float_path, (*records, record), model)
