"""Building what a recipe describes: one candidate (`build`) or the accuracy-aware back-off (`search`).

The recipe grammar and the technique registry live in the kernel (modelroll/recipes.py), so that every entry
point refuses a bad recipe alike; they are re-exported here for the optimizer's modules.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from modelroll.recipes import (
    ALIASES,
    TECHNIQUES,
    Param,
    Recipe,
    Step,
    Technique,
    check_recipe,
    make_step,
    parse_recipe,
    recipe_slug,
)

if TYPE_CHECKING:  # build and search import this module: their types only, at type-check time
    from optimizer.backoff import SearchResult
    from optimizer.build import Candidate
    from optimizer.sources import ModelSource

__all__ = ["ALIASES", "BAD_RECIPE", "GOOD_RECIPE", "MINILM_RECIPE", "TECHNIQUES", "Param", "Recipe", "Step",
           "Technique", "build", "check_recipe", "make_step", "parse_recipe", "recipe_slug", "search"]

# The demo's pair on the digits model, both measured (tests/unit/test_techniques.py): the good one keeps
# accuracy (97.2 % → 97.2 %) at 1/16 of the size; the bad one, pruned harder and not fine-tuned, loses
# ~5 points (97.2 % → 92.0 %) while still passing the latency and memory gates.
GOOD_RECIPE = "prune:0.5,distill,int8"
BAD_RECIPE = "prune:0.6,int8"
# all-MiniLM-L6-v2's quality-first candidate, measured against FP32 on 512 eval sentences: mean cosine
# 0.9974 and nearest-neighbour agreement 91.4 % (plain quantize_dynamic: 0.9637 and 70.7 %), 74 % smaller.
MINILM_RECIPE = "int8:per_channel:smooth=0.7:exclude=1"


def build(recipe: Recipe | str, source: ModelSource, out_dir: Path) -> Candidate:
    """Build one candidate (see optimizer.build.build): `out_dir/model.onnx` (or an OpenVINO IR folder) plus a
    record per step."""
    from optimizer.build import build as run

    return run(recipe, source, out_dir)


def search(recipe: Recipe | str, source: ModelSource, work_dir: Path, measure_quality: Callable[[Path], float],
           *, baseline_quality: float | None = None, max_quality_drop: float = 0.02,
           max_tries: int = 6, on_try: Callable[[int, str, str], None] | None = None) -> SearchResult:
    """Accuracy-aware back-off search (see optimizer.backoff.search): build, measure with the caller's
    `measure_quality(model_path) -> quality in [0, 1]`, back off while the drop exceeds the budget,
    at most `max_tries` builds; `SearchResult.tries` records every try, `.best` the passing one; `on_try(index,
    recipe, why)` is called as each try starts."""
    from optimizer.backoff import search as run

    return run(recipe, source, work_dir, measure_quality, baseline_quality=baseline_quality,
               max_quality_drop=max_quality_drop, max_tries=max_tries, on_try=on_try)
