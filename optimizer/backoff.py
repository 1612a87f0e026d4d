"""Accuracy-aware search: build a recipe, measure it, and while it loses more than the budget, back off and retry.

Back-off is decided by measurement: if the float model after the torch steps already loses more
than the budget, the structure is softened (prune less, drop one layer fewer); otherwise the
quantization keeps more of its most sensitive nodes in float (1, 2, 4, ...). Every try is recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from modelroll.errors import InvalidInput
from optimizer.build import StepRecord, build_float, quantize_step
from optimizer.quantize import weight_nodes
from optimizer.recipes import Recipe, Step, check_recipe, parse_recipe
from optimizer.sources import ModelSource


@dataclass(frozen=True)
class Try:
    """One built and measured candidate of the search."""

    index: int
    recipe: str
    action: str
    model_path: Path  # the candidate's artifact: an ONNX file or an OpenVINO IR folder
    quality: float
    quality_drop: float
    float_quality: float | None
    passed: bool
    records: tuple[StepRecord, ...]


@dataclass(frozen=True)
class SearchResult:
    baseline_quality: float
    max_quality_drop: float
    tries: tuple[Try, ...]

    @property
    def best(self) -> Try | None:
        """The passing try (the search stops at the first), else None."""
        return next((t for t in self.tries if t.passed), None)


def _soften(recipe: Recipe, records: list[StepRecord]) -> tuple[Recipe | None, str]:
    """Make the last shrinking step gentler; drop it (and a now-pointless distill) when it is already small."""
    for index in range(len(recipe.steps) - 1, -1, -1):
        step = recipe.steps[index]
        options = step.options
        if step.technique == "prune":
            amount, heads = round(options["amount"] * 0.6, 4), round(options["heads"] * 0.6, 4)
            if amount >= 0.05 or heads >= 0.05:
                message = f"pruned less: amount {options['amount']:g} → {amount:g}"
                if options["heads"]:
                    message += f", heads {options['heads']:g} → {heads:g}"
                return recipe.replace_step(index, step.replace(amount=amount, heads=heads)), message
        elif step.technique == "drop-layers":
            done = next((r.detail for r in records if r.step == str(step)), {})
            dropped, total = len(done.get("dropped", [])), int(done.get("layers_before", 0))
            if dropped > 1 and total:
                fraction = (dropped - 1 + 0.5) / total
                return (recipe.replace_step(index, step.replace(fraction=fraction)),
                        f"dropped one layer fewer: {dropped} → {dropped - 1} of {total}")
        else:
            continue
        remaining = recipe.steps[:index] + recipe.steps[index + 1 :]
        if not any(s.technique in ("prune", "drop-layers") for s in remaining):
            remaining = tuple(s for s in remaining if s.technique != "distill")
        if not remaining:
            return None, "nothing left to back off"
        return check_recipe(Recipe(remaining)), f"removed {step} (already at its smallest useful setting)"
    return None, "no shrinking step left to soften"


def _exclude_more(recipe: Recipe, float_path: Path) -> tuple[Recipe | None, str]:
    quantization = recipe.quantization
    if quantization is None:
        return None, "no quantization step"
    if "exclude" not in quantization.options:
        return None, f"{quantization.technique} keeps no node in float: nothing to back off"
    total = len(weight_nodes(float_path))
    current = quantization.options["exclude"]
    wanted = min(total - 1, max(1, current * 2))
    if wanted <= current:
        return None, f"already {current} of {total} weight nodes kept in float"
    index = recipe.steps.index(quantization)
    return (recipe.replace_step(index, quantization.replace(exclude=wanted)),
            f"kept the {wanted} most sensitive weight nodes in float (was {current})")


def search(recipe: Recipe | str, source: ModelSource, work_dir: Path, measure_quality: Callable[[Path], float],
           *, baseline_quality: float | None = None, max_quality_drop: float = 0.02,
           max_tries: int = 6, on_try: Callable[[int, str, str], None] | None = None) -> SearchResult:
    """Build `recipe`; while quality drops more than `max_quality_drop` below the baseline's, back off,
    for at most `max_tries` builds. `measure_quality(model_path)` returns accuracy or agreement in
    [0, 1] (higher is better); the baseline's is measured on `source.onnx_path` unless given. `on_try(index,
    recipe, why)` is called as each try starts (progress)."""
    if max_tries < 1:
        raise InvalidInput(f"max_tries must be >= 1, got {max_tries}")
    current: Recipe | None = parse_recipe(recipe) if isinstance(recipe, str) else recipe
    baseline = measure_quality(source.onnx_path) if baseline_quality is None else baseline_quality
    floats: dict[str, tuple[Path, nn.Module | None, list[StepRecord]]] = {}
    float_qualities: dict[str, float] = {}
    rankings: dict[str, list[str]] = {}
    tries: list[Try] = []
    action = "first try"
    while current is not None and len(tries) < max_tries:
        if on_try is not None:
            on_try(len(tries), str(current), action)
        folder = Path(work_dir) / f"try-{len(tries)}"
        folder.mkdir(parents=True, exist_ok=True)
        torch_key = ",".join(str(s) for s in current.torch_steps)
        if torch_key not in floats:
            floats[torch_key] = build_float(current.torch_steps, source, folder)
        float_path, _, records = floats[torch_key]
        all_records = list(records)
        quantization: Step | None = current.quantization
        path = float_path
        if quantization is not None:
            # One sensitivity ranking per float model and quantization, whatever the number of nodes excluded.
            unexcluded = quantization.replace(exclude=0) if "exclude" in quantization.options else quantization
            rank_key = f"{torch_key}|{unexcluded}"
            path, record, rankings[rank_key] = quantize_step(quantization, float_path, source, folder,
                                                             rankings.get(rank_key))
            all_records.append(record)
        quality = measure_quality(path)
        passed = baseline - quality <= max_quality_drop
        float_quality = None
        if not passed and quantization is not None and current.torch_steps:
            if torch_key not in float_qualities:
                float_qualities[torch_key] = measure_quality(float_path)
            float_quality = float_qualities[torch_key]
        tries.append(Try(len(tries), str(current), action, path, quality, baseline - quality, float_quality,
                         passed, tuple(all_records)))
        if passed:
            break
        structure_at_fault = quantization is None or (
            float_quality is not None and baseline - float_quality > max_quality_drop)
        following, action = (None, "")
        if not structure_at_fault:
            following, action = _exclude_more(current, folder / "prepared.onnx")
        if following is None and current.torch_steps:
            following, action = _soften(current, records)
        current = following
    return SearchResult(baseline, max_quality_drop, tuple(tries))
