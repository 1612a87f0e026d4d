"""Layer dropping ranked by measured sensitivity: remove whole layers whose removal changes the output least.

Greedy: try removing each remaining layer, measure the change of the model's output on calibration
batches (mean cosine distance to the original model's output), drop the least sensitive one,
re-measure, repeat until the layer budget or the change budget is spent. Every measurement is kept.
Applies to BERT-like encoders (transformer layers) and to the digits MLP (its square hidden layers).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from modelroll.errors import InvalidInput
from optimizer.sources import DigitsMLP, SentenceEncoder

Feeds = Sequence[dict[str, np.ndarray]]


@dataclass(frozen=True, slots=True)
class LayerProbe:
    """One measurement: the output change if `layer` (index in the original model) were dropped next."""

    round: int
    layer: int
    output_change: float


@dataclass(frozen=True)
class LayerDropResult:
    """The shrunk copy, the original indices of the dropped layers in drop order, and every probe."""

    model: nn.Module
    dropped: tuple[int, ...]
    output_change: float
    probes: tuple[LayerProbe, ...]
    layers_before: int
    layers_after: int


def _outputs(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(**b) for b in batches]


def _change(reference: list[torch.Tensor], outputs: list[torch.Tensor]) -> float:
    distances = [1.0 - nn.functional.cosine_similarity(a, b, dim=-1) for a, b in zip(reference, outputs, strict=True)]
    return float(torch.cat(distances).mean())


def _candidates(model: nn.Module) -> list[int]:
    """Indices (in model's current layer list) that can be removed without breaking shapes."""
    if isinstance(model, SentenceEncoder):
        return list(range(len(model.layers)))
    if isinstance(model, DigitsMLP):
        # Hidden layer i maps relu output -> relu output; removable when square (not the first, not the last).
        return [i for i in range(1, len(model.layers) - 1)
                if model.layers[i].in_features == model.layers[i].out_features]
    raise InvalidInput(f"layer dropping applies to BERT-like encoders and the digits MLP, got {type(model).__name__}")


def _shallow(module: nn.Module) -> nn.Module:
    # copy.copy alone would share the child registry, so replacing a child would change the original.
    twin = copy.copy(module)
    twin._modules = dict(module._modules)
    return twin


def _without(model: nn.Module, index: int) -> nn.Module:
    """A shallow variant of `model` without layer `index` (shares the remaining layers' weights)."""
    keep = nn.ModuleList(m for i, m in enumerate(getattr(model, "layers")) if i != index)  # noqa: B009
    variant = _shallow(model)
    if isinstance(variant, SentenceEncoder):
        variant.bert = _shallow(variant.bert)
        encoder = _shallow(getattr(variant.bert, "encoder"))  # noqa: B009
        encoder.layer = keep
        variant.bert.encoder = encoder
    else:
        variant.layers = keep
    return variant


def drop_layers(model: nn.Module, feeds: Feeds, *, max_fraction: float = 0.34,
                max_output_change: float = 1.0) -> LayerDropResult:
    """Drop up to floor(max_fraction × layers) layers, least sensitive first, while the output change
    (mean cosine distance to the original output on `feeds`) stays <= `max_output_change`."""
    if not 0.0 < max_fraction < 1.0:
        raise InvalidInput(f"max_fraction must be in (0, 1), got {max_fraction}")
    if not feeds:
        raise InvalidInput("layer dropping needs calibration batches to measure sensitivity")
    candidates = _candidates(model)
    total = len(model.layers) if isinstance(model, SentenceEncoder | DigitsMLP) else 0
    budget = min(math.floor(max_fraction * total), len(candidates))
    if not candidates:
        raise InvalidInput(
            f"{type(model).__name__} has no droppable layer: an MLP needs square hidden layers "
            "(prune after dropping layers, not before)"
        )
    if budget < 1:
        raise InvalidInput(f"max_fraction {max_fraction} of {total} layers is less than one layer: raise it")
    batches = [{k: torch.from_numpy(v) for k, v in f.items()} for f in feeds]
    model = model.eval()
    reference = _outputs(model, batches)
    current, original_index = model, list(range(total))
    dropped: list[int] = []
    probes: list[LayerProbe] = []
    change = 0.0
    for round_ in range(budget):
        scored = []
        for position in _candidates(current):
            probe = _change(reference, _outputs(_without(current, position), batches))
            probes.append(LayerProbe(round_, original_index[position], probe))
            scored.append((probe, position))
        if not scored:
            break
        best_change, best = min(scored)
        if best_change > max_output_change:
            break
        current = _without(current, best)
        dropped.append(original_index.pop(best))
        change = best_change
    result: Any = copy.deepcopy(current)
    if isinstance(result, SentenceEncoder):
        config: Any = result.bert.config
        config.num_hidden_layers = len(result.layers)
    return LayerDropResult(result.eval(), tuple(dropped), change, tuple(probes), total, len(result.layers))
