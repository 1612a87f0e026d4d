"""Structured pruning that physically shrinks a model: MLP hidden neurons, encoder FFN neurons and attention heads.

Importance is measured on calibration inputs (mean |activation| of a unit times the norm of the weights
that carry it onward), the least important units are removed and smaller nn.Linear layers rebuilt.
The input model is never modified: every function returns a pruned deep copy.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from modelroll.errors import InvalidInput
from optimizer.sources import DigitsMLP, SentenceEncoder

Feeds = Sequence[dict[str, np.ndarray]]


@dataclass(frozen=True)
class PruneResult:
    """The pruned copy and what was kept: units per pruned layer, parameter counts before and after."""

    model: nn.Module
    params_before: int
    params_after: int
    kept: dict[str, int] = field(default_factory=dict)

    @property
    def params_ratio(self) -> float:
        return self.params_after / self.params_before


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _check_amount(name: str, amount: float) -> float:
    if isinstance(amount, bool) or not isinstance(amount, int | float) or not 0.0 <= amount < 1.0:
        raise InvalidInput(f"{name} must be a fraction in [0, 1), got {amount!r}")
    return float(amount)


def _keep_count(total: int, amount: float) -> int:
    return max(1, total - round(total * amount))


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None and layer.bias is not None:
            layer.bias.copy_(bias)
    return layer


def _rows(layer: nn.Linear, index: torch.Tensor) -> nn.Linear:
    bias = layer.bias.detach()[index] if layer.bias is not None else None
    return _linear(layer.weight.detach()[index], bias)


def _columns(layer: nn.Linear, index: torch.Tensor) -> nn.Linear:
    bias = layer.bias.detach() if layer.bias is not None else None
    return _linear(layer.weight.detach()[:, index], bias)


def _top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    return torch.sort(torch.topk(scores, keep).indices).values


# ---- MLP ----


def mlp_importance(model: DigitsMLP) -> list[torch.Tensor]:
    """Per hidden layer, one score per neuron: norm of its incoming weights × norm of its outgoing weights.

    Measured on the digits model, this data-free score keeps more accuracy than activation-based scores
    (mean |a|, std(a), with or without folding removed means into the next bias): 94.8 % vs <= 94.4 %
    at 50 % pruned, 84 % vs <= 35 % at 75 %.
    """
    layers = [layer for layer in model.layers if isinstance(layer, nn.Linear)]
    with torch.no_grad():
        return [layer.weight.norm(dim=1) * layers[i + 1].weight.norm(dim=0) for i, layer in enumerate(layers[:-1])]


def prune_mlp(model: DigitsMLP, amount: float) -> PruneResult:
    """Remove `amount` of the neurons of every hidden layer, least important first; shapes shrink."""
    amount = _check_amount("prune amount", amount)
    scores = mlp_importance(model)
    layers = [layer for layer in model.layers if isinstance(layer, nn.Linear)]
    pruned = copy.deepcopy(model)
    new_layers: list[nn.Linear] = []
    previous: torch.Tensor | None = None
    kept: dict[str, int] = {}
    for index, layer in enumerate(layers):
        current = layer if previous is None else _columns(layer, previous)
        if index < len(layers) - 1:
            previous = _top(scores[index], _keep_count(layer.out_features, amount))
            current = _rows(current, previous)
            kept[f"layers.{index}"] = current.out_features
        new_layers.append(current)
    pruned.layers = nn.ModuleList(new_layers)
    return PruneResult(pruned.eval(), count_params(model), count_params(pruned), kept)


# ---- BERT-like encoder ----


def _attention(layer: Any) -> tuple[Any, nn.Linear]:
    return layer.attention.self, layer.attention.output.dense


def _head_size(self_attention: Any) -> int:
    return int(self_attention.attention_head_size)


def encoder_importance(encoder: SentenceEncoder, feeds: Feeds) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer: head scores (norm of each head's share of the attention output) and FFN neuron scores."""
    layers: list[Any] = list(encoder.layers)
    heads = [torch.zeros(0) for _ in layers]
    neurons = [torch.zeros(0) for _ in layers]
    mask_holder: dict[str, torch.Tensor] = {}
    hooks = []

    def masked_mean(values: torch.Tensor) -> torch.Tensor:  # [batch, seq, k] -> [k], over real tokens only
        mask = mask_holder["mask"].unsqueeze(-1).to(values.dtype)
        return (values * mask).sum(dim=(0, 1)) / mask.sum().clamp(min=1.0)

    for index, layer in enumerate(layers):
        self_attention, out_dense = _attention(layer)
        size = _head_size(self_attention)

        def on_context(_m: nn.Module, args: tuple[torch.Tensor, ...], index: int = index,
                       dense: nn.Linear = out_dense, size: int = size) -> None:
            context = args[0]
            count = context.shape[-1] // size
            parts = context.view(*context.shape[:-1], count, size)
            weight = dense.weight.view(dense.out_features, count, size)
            share = torch.einsum("bthd,ohd->btho", parts, weight).norm(dim=-1)
            heads[index] = heads[index] + masked_mean(share) if heads[index].numel() else masked_mean(share)

        def on_ffn(_m: nn.Module, _args: tuple[torch.Tensor, ...], output: torch.Tensor, index: int = index,
                   layer: Any = layer) -> None:
            outgoing = layer.output.dense.weight.norm(dim=0)
            score = masked_mean(output.abs()) * outgoing
            neurons[index] = neurons[index] + score if neurons[index].numel() else score

        hooks.append(out_dense.register_forward_pre_hook(on_context))
        hooks.append(layer.intermediate.register_forward_hook(on_ffn))
    try:
        with torch.no_grad():
            for feed in feeds:
                tensors = {k: torch.from_numpy(v) for k, v in feed.items()}
                mask_holder["mask"] = tensors["attention_mask"]
                encoder(**tensors)
    finally:
        for hook in hooks:
            hook.remove()
    return heads, neurons


def prune_encoder(encoder: SentenceEncoder, feeds: Feeds, *, ffn_amount: float = 0.0,
                  heads_amount: float = 0.0) -> PruneResult:
    """Remove `ffn_amount` of every layer's FFN neurons and `heads_amount` of its attention heads, physically."""
    ffn_amount = _check_amount("ffn amount", ffn_amount)
    heads_amount = _check_amount("heads amount", heads_amount)
    if not feeds:
        raise InvalidInput("encoder pruning needs calibration text batches to measure importance")
    head_scores, neuron_scores = encoder_importance(encoder, feeds)
    pruned = copy.deepcopy(encoder)
    kept: dict[str, int] = {}
    layer: Any
    for index, layer in enumerate(pruned.layers):
        self_attention, out_dense = _attention(layer)
        size = _head_size(self_attention)
        count = out_dense.in_features // size
        if heads_amount > 0:
            keep_heads = _top(head_scores[index], _keep_count(count, heads_amount))
            columns = (keep_heads[:, None] * size + torch.arange(size)[None, :]).reshape(-1)
            for name in ("query", "key", "value"):
                setattr(self_attention, name, _rows(getattr(self_attention, name), columns))
            layer.attention.output.dense = _columns(out_dense, columns)
            # The attention reshapes with -1 heads, so only these bookkeeping fields need the new count.
            self_attention.num_attention_heads = len(keep_heads)
            self_attention.all_head_size = len(keep_heads) * size
        kept[f"layer.{index}.heads"] = layer.attention.output.dense.in_features // size
        if ffn_amount > 0:
            up, down = layer.intermediate.dense, layer.output.dense
            keep_neurons = _top(neuron_scores[index], _keep_count(up.out_features, ffn_amount))
            layer.intermediate.dense = _rows(up, keep_neurons)
            layer.output.dense = _columns(down, keep_neurons)
        kept[f"layer.{index}.ffn"] = layer.intermediate.dense.out_features
    return PruneResult(pruned.eval(), count_params(encoder), count_params(pruned), kept)


def prune(model: nn.Module, feeds: Feeds, *, amount: float, heads: float = 0.0) -> PruneResult:
    """Dispatch: a DigitsMLP loses `amount` of its hidden neurons (weight-norm importance, `feeds` unused);
    a SentenceEncoder `amount` of its FFN neurons and `heads` of its attention heads (importance measured
    on `feeds`, calibration batches keyed by ONNX input name)."""
    if isinstance(model, DigitsMLP):
        if heads:
            raise InvalidInput("heads= applies to encoders only: an MLP has no attention heads")
        return prune_mlp(model, amount)
    if isinstance(model, SentenceEncoder):
        return prune_encoder(model, feeds, ffn_amount=amount, heads_amount=heads)
    raise InvalidInput(
        f"structured pruning supports the digits MLP and BERT-like sentence encoders, got {type(model).__name__}"
    )
