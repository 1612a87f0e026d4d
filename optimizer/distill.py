"""Short fine-tune of a shrunk model against its baseline's outputs (knowledge distillation), bounded by steps and time.

The teacher's outputs on the calibration batches are the only targets: no labels are needed.
Loss: MSE on logits for the digits MLP. For encoders: 1 - cosine plus MSE on the mean-pooled
embeddings, plus 1 - cosine of every real token's last hidden state, which gives each sentence
dozens of targets instead of one (pruning keeps the token layout, so they line up).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from modelroll.errors import InvalidInput
from optimizer.sources import SentenceEncoder, mean_pool, torch_threads

DEFAULT_LR = {"mlp": 1e-3, "encoder": 1e-4}


@dataclass(frozen=True)
class DistillResult:
    """The fine-tuned copy and how the fine-tune went (loss on the calibration batches before and after)."""

    model: nn.Module
    steps: int
    seconds: float
    loss_before: float
    loss_after: float


Outputs = tuple[torch.Tensor, torch.Tensor | None]


def _forward(model: nn.Module, batch: dict[str, torch.Tensor], encoder: bool) -> Outputs:
    if not encoder:
        return model(**batch), None
    bert: Any = getattr(model, "bert")  # noqa: B009 - nn.Module attributes are untyped
    hidden = bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    return mean_pool(hidden, batch["attention_mask"]), hidden


def _loss(student: Outputs, teacher: Outputs, mask: torch.Tensor | None) -> torch.Tensor:
    mse = nn.functional.mse_loss(student[0], teacher[0])
    if student[1] is None or teacher[1] is None or mask is None:
        return mse
    cosine = nn.functional.cosine_similarity(student[0], teacher[0], dim=-1).mean()
    weights = mask.to(student[1].dtype)
    tokens = nn.functional.cosine_similarity(student[1], teacher[1], dim=-1)
    token_cosine = (tokens * weights).sum() / weights.sum().clamp(min=1.0)
    return (1.0 - cosine) + mse + (1.0 - token_cosine)


def _minibatches(feeds: Sequence[dict[str, np.ndarray]], rows: int) -> list[dict[str, torch.Tensor]]:
    out = []
    for feed in feeds:
        total = len(next(iter(feed.values())))
        for start in range(0, total, rows):
            out.append({k: torch.from_numpy(np.ascontiguousarray(v[start : start + rows])) for k, v in feed.items()})
    return out


def _mean_loss(model: nn.Module, batches: list[dict[str, torch.Tensor]], targets: list[Outputs],
               encoder: bool) -> float:
    with torch.no_grad():
        return float(np.mean([_loss(_forward(model, b, encoder), t, b.get("attention_mask")).item()
                              for b, t in zip(batches, targets, strict=True)]))


def distill(student: nn.Module, teacher: nn.Module, feeds: Sequence[dict[str, np.ndarray]], *,
            steps: int = 300, max_seconds: float = 120.0, lr: float | None = None,
            batch_rows: int = 64, seed: int = 0) -> DistillResult:
    """Fine-tune a copy of `student` to reproduce `teacher` on `feeds` (batches keyed by ONNX input name).

    Stops after `steps` optimizer steps or `max_seconds`, whichever comes first. Encoder word
    embeddings stay frozen (they are shared by every layer choice and dominate the parameter count).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InvalidInput(f"distill steps must be an integer >= 1, got {steps!r}")
    if max_seconds <= 0:
        raise InvalidInput(f"distill max_seconds must be > 0, got {max_seconds}")
    if not feeds:
        raise InvalidInput("distillation needs calibration batches: give at least one")
    encoder = isinstance(student, SentenceEncoder)
    model = copy.deepcopy(student).eval()  # eval: no dropout, the fine-tune must be deterministic
    teacher.eval()
    batches = _minibatches(feeds, batch_rows)
    with torch.no_grad():
        targets = [_forward(teacher, b, encoder) for b in batches]
    if encoder:
        frozen: Any = model.bert
        frozen.embeddings.word_embeddings.weight.requires_grad_(False)
    parameters = [p for p in model.parameters() if p.requires_grad]
    rate = lr if lr is not None else DEFAULT_LR["encoder" if encoder else "mlp"]
    optimizer = torch.optim.AdamW(parameters, lr=rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / steps))
    with torch_threads(1):
        loss_before = _mean_loss(model, batches, targets, encoder)
        done, seconds = _train(model, optimizer, schedule, batches, targets, encoder, steps, max_seconds, seed)
        loss_after = _mean_loss(model, batches, targets, encoder)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return DistillResult(model.eval(), done, seconds, loss_before, loss_after)


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LRScheduler,
           batches: list[dict[str, torch.Tensor]], targets: list[Outputs], encoder: bool, steps: int,
           max_seconds: float, seed: int) -> tuple[int, float]:
    generator = torch.Generator().manual_seed(seed)
    started = time.monotonic()
    done = 0
    while done < steps and time.monotonic() - started < max_seconds:
        for index in torch.randperm(len(batches), generator=generator).tolist():
            batch = batches[index]
            loss = _loss(_forward(model, batch, encoder), targets[index], batch.get("attention_mask"))
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            schedule.step()
            done += 1
            if done >= steps or time.monotonic() - started >= max_seconds:
                break
    return done, time.monotonic() - started
