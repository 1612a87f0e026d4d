"""What the evaluator measured for one variant: latency, memory, size, CPU and quality, as plain frozen data.

Written by the optimizer, stored as JSON in the database (`to_dict` / `from_dict`), shown by the controller.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

# What the accuracy gate reads: accuracy on labels; else top-1 agreement (classifiers) or the mean cosine to
# the baseline's embedding (encoders). Nearest-neighbour agreement is shown beside, never gated: on an
# unlabelled set most items have near-tied neighbours, so it mostly measures tie-breaking.
QUALITY_METRICS = ("accuracy", "top1_agreement", "cosine_mean", "nn_agreement")


@dataclass(frozen=True, slots=True)
class LatencyFigures:
    """Runner time per request at one batch size (one `session.run`), and its CPU time."""

    batch_size: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    cpu_ms: float
    runs: int
    stable: bool


@dataclass(frozen=True, slots=True)
class MemoryFigures:
    """Peak resident memory after load and inference at `batch_size`: minus before load, and absolute."""

    batch_size: int
    memory_bytes: int
    memory_total_bytes: int


@dataclass(frozen=True, slots=True)
class QualityFigures:
    """`metric` names the figure the accuracy gate reads; the others are shown beside it when known."""

    metric: str
    rows: int
    accuracy: float | None = None
    top1_agreement: float | None = None
    cosine_mean: float | None = None
    nn_agreement: float | None = None

    def __post_init__(self) -> None:
        if self.metric not in QUALITY_METRICS:
            raise ValueError(f"quality metric must be one of {QUALITY_METRICS}, got {self.metric!r}")
        if getattr(self, self.metric) is None:
            raise ValueError(f"quality metric {self.metric!r} has no value")

    @property
    def value(self) -> float:
        value: float = getattr(self, self.metric)
        return value


@dataclass(frozen=True, slots=True)
class Figures:
    """Everything measured for one variant in one fresh process."""

    size_bytes: int
    latency: tuple[LatencyFigures, ...]
    memory: tuple[MemoryFigures, ...]
    quality: QualityFigures | None
    runtime_bytes: int  # resident memory of the process before the model was loaded (runtime's fixed cost)
    load_ms: float
    threads: int
    onnxruntime: str  # the onnxruntime version of the measuring process ("" when another runtime measured)
    runtime: str = ""  # the runtime that ran the variant and its version, e.g. "openvino 2026.4.1"
    runtime_settings: Mapping[str, str] = field(default_factory=dict)  # part of the candidate, e.g. a precision

    @property
    def runtime_label(self) -> str:
        """E.g. "onnxruntime 1.32.0" or "openvino 2026.4.1 (INFERENCE_PRECISION_HINT=f32)"."""
        name = self.runtime or f"onnxruntime {self.onnxruntime}".strip()
        settings = ", ".join(f"{k}={v}" for k, v in sorted(self.runtime_settings.items()))
        return f"{name} ({settings})" if settings else name

    def latency_at(self, batch_size: int) -> LatencyFigures | None:
        return next((f for f in self.latency if f.batch_size == batch_size), None)

    def memory_at(self, batch_size: int) -> MemoryFigures | None:
        return next((f for f in self.memory if f.batch_size == batch_size), None)

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        return tuple(f.batch_size for f in self.latency)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["runtime_settings"] = dict(self.runtime_settings)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Figures:
        quality = data.get("quality")
        return cls(
            size_bytes=int(data["size_bytes"]),
            latency=tuple(LatencyFigures(**f) for f in data["latency"]),
            memory=tuple(MemoryFigures(**f) for f in data["memory"]),
            quality=QualityFigures(**quality) if quality else None,
            runtime_bytes=int(data["runtime_bytes"]),
            load_ms=float(data["load_ms"]),
            threads=int(data["threads"]),
            onnxruntime=str(data["onnxruntime"]),
            runtime=str(data.get("runtime") or ""),
            runtime_settings={str(k): str(v) for k, v in (data.get("runtime_settings") or {}).items()},
        )
