"""Optimization jobs as the CLI and the ops API submit them: a request checked at the edge, a row, a queue entry.

`submit_job` checks everything it can before writing (model, baseline, techniques, gates, eval data),
commits the job row, then enqueues it; if the enqueue fails the row is removed again, so a failed
submission leaves nothing behind. A row whose enqueue was cut short by a crash is re-enqueued by
`requeue_orphans` (workers call it).
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import orjson
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from modelroll.artifacts import ArtifactStore, check_sha256
from modelroll.db import ArtifactRow, ModelRow, OptimizationJobRow, VariantRow
from modelroll.errors import Conflict, InvalidInput, ModelrollError, NotFound, Unavailable
from modelroll.inputs import InputPolicy
from modelroll.live.base import LiveChannel
from modelroll.recipes import TECHNIQUES, parse_recipe
from modelroll.types import Criteria, check_name, criteria_from_dict, criteria_to_dict

QUEUE = "optimize"
JOB_STATES = ("queued", "running", "retrying", "succeeded", "failed")
TERMINAL_STATES = frozenset({"succeeded", "failed"})
MAX_BATCH_SIZE = 1024
MAX_RECIPES = 16


def check_recipes(techniques: Any) -> tuple[str, ...]:
    """The recipes as given, stripped, each parsed with the full grammar (parameters included), so that a bad one
    is refused before a job is queued, with the part that is wrong and what is accepted."""
    if isinstance(techniques, (str, bytes)) or not isinstance(techniques, Sequence) \
            or not techniques or len(techniques) > MAX_RECIPES:
        raise InvalidInput(f"techniques must be a list of 1 to {MAX_RECIPES} recipes such as ['int8', "
                           f"'prune:0.5,distill,int8']; techniques: {sorted(TECHNIQUES)}")
    for recipe in techniques:
        if not isinstance(recipe, str) or len(recipe) > 500:
            raise InvalidInput(f"a recipe must be text of at most 500 characters such as 'prune:0.5,distill,int8', "
                               f"got {recipe!r:.80}")
        parse_recipe(recipe)
    stripped = tuple(t.strip() for t in techniques)
    if len(set(stripped)) != len(stripped):
        raise InvalidInput(f"techniques has duplicates: {list(stripped)}")
    return stripped


def _check_int_list(name: str, values: Any, low: int, high: int) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise InvalidInput(f"{name} must be a non-empty list of integers in [{low}, {high}], got {values!r}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise InvalidInput(f"{name} must hold integers in [{low}, {high}], got {value!r}")
    if len(set(values)) != len(values):
        raise InvalidInput(f"{name} has duplicates: {list(values)}")
    return tuple(sorted(values))


@dataclass(frozen=True, slots=True)
class OptimizationRequest:
    """What to build from which baseline, how to judge it (gates) and on which eval data.

    Each entry of `techniques` is a recipe (one candidate): "int8", "int8-static:entropy",
    "prune:0.5,distill,int8". `eval_sha256` is filled in by `submit_job` once the eval data is stored.
    """

    model: str
    techniques: tuple[str, ...] = ("int8",)
    criteria: Criteria = field(default_factory=Criteria)
    eval_data: str | None = None  # .npz path; None: the baseline's own eval set (built-in models)
    baseline: str | None = None  # variant name; None: the model's newest baseline
    batch_sizes: tuple[int, ...] = (1, 32)
    threads: int = 1
    eval_sha256: str | None = None

    def __post_init__(self) -> None:
        check_name("model", self.model)
        if self.baseline is not None:
            check_name("baseline", self.baseline)
        object.__setattr__(self, "techniques", check_recipes(self.techniques))
        object.__setattr__(self, "batch_sizes", _check_int_list("batch_sizes", self.batch_sizes, 1, MAX_BATCH_SIZE))
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or not 1 <= self.threads <= 64:
            raise InvalidInput(f"threads must be an integer in [1, 64], got {self.threads!r}")
        if self.eval_data is not None and (not isinstance(self.eval_data, str) or not self.eval_data.endswith(".npz")):
            raise InvalidInput(f"eval_data must be the path of an .npz file, got {self.eval_data!r}")
        if self.eval_sha256 is not None:
            check_sha256(self.eval_sha256)

    @property
    def needs_torch(self) -> tuple[str, ...]:
        """The recipes that need the baseline's torch model."""
        return tuple(r for r in self.techniques if parse_recipe(r).torch_steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "techniques": list(self.techniques), "criteria": criteria_to_dict(self.criteria),
            "eval_data": self.eval_data, "baseline": self.baseline, "batch_sizes": list(self.batch_sizes),
            "threads": self.threads, "eval_sha256": self.eval_sha256,
        }

    @classmethod
    def from_dict(cls, data: Any) -> OptimizationRequest:
        if not isinstance(data, Mapping):
            raise InvalidInput(f"an optimization request must be an object, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise InvalidInput(f"unknown optimization field(s) {sorted(unknown)}; accepted: {sorted(known)}")
        if "model" not in data:
            raise InvalidInput("an optimization request needs 'model'")
        values = dict(data)
        values["criteria"] = criteria_from_dict(values.get("criteria") or {})
        for name in ("techniques", "batch_sizes"):
            if name in values:
                raw = values[name]
                if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
                    raise InvalidInput(f"{name} must be a list, got {type(raw).__name__}")
                values[name] = tuple(raw)
        return cls(**values)


def _onnx_inputs(path: Path) -> list[tuple[str, int, list[int | None]]]:
    """(name, element type, dims with None for symbolic) of each graph input that is not an initializer."""
    model = onnx.load(str(path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    found = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        found.append((value.name, tensor.elem_type, dims))
    return found


def check_eval_data(eval_path: Path, model_path: Path) -> int:
    """Check an .npz against the model's inputs (names, ranks, fixed dims, dtypes, row counts); returns rows."""
    if not eval_path.is_file():
        raise InvalidInput(f"eval data {str(eval_path)!r} does not exist: give an .npz file with one array per "
                           "model input (named like the input, rows on the first axis) and an optional 'labels' array")
    try:
        with np.load(eval_path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InvalidInput(f"eval data {eval_path.name!r} is not a readable .npz file ({exc})") from None
    inputs = _onnx_inputs(model_path)
    accepted = ", ".join(f"{name} {['?' if d is None else d for d in dims]}" for name, _, dims in inputs)
    rows: set[int] = set()
    for name, elem_type, dims in inputs:
        if name not in arrays:
            raise InvalidInput(f"eval data has no array {name!r}: the model's inputs are {accepted}; "
                               f"the file has {sorted(arrays)}")
        array = arrays[name]
        expected = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
        if array.ndim != len(dims) or any(d is not None and i > 0 and d != s
                                          for i, (d, s) in enumerate(zip(dims, array.shape, strict=False))):
            raise InvalidInput(f"eval data {name!r} has shape {list(array.shape)}; the model expects "
                               f"{['?' if d is None else d for d in dims]} (? = any)")
        if array.dtype != expected:
            raise InvalidInput(f"eval data {name!r} has dtype {array.dtype}; the model expects {expected}")
        rows.add(int(array.shape[0]) if array.ndim else 0)
    if "labels" in arrays:
        rows.add(int(arrays["labels"].shape[0]) if arrays["labels"].ndim else 0)
    if len(rows) != 1 or 0 in rows:
        raise InvalidInput(f"eval data arrays (and labels) must have the same, non-zero number of rows; got {rows}")
    return rows.pop()


def resolve_baseline(session: Session, model: str, baseline: str | None) -> tuple[ModelRow, VariantRow]:
    model_row = session.scalar(select(ModelRow).where(ModelRow.name == model))
    if model_row is None:
        raise NotFound(f"model {model!r} is not registered: register its ONNX file first "
                       f"(`modelroll optimize path/to/{model}.onnx`)")
    query = select(VariantRow).where(VariantRow.model_id == model_row.id)
    if baseline is None:
        query = query.where(VariantRow.role == "baseline", VariantRow.retired_at.is_(None))
        query = query.order_by(VariantRow.id.desc())
    else:
        query = query.where(VariantRow.name == baseline)
    variant = session.scalars(query.limit(1)).first()
    if variant is None:
        raise NotFound(f"model {model!r} has no {'live baseline variant' if baseline is None else repr(baseline)}")
    if variant.retired_at is not None:
        raise Conflict(f"variant {baseline!r} of model {model!r} is retired (its artifacts may be deleted): "
                       "optimize from a live variant (`modelroll models list`)")
    return model_row, variant


def eval_data_path(request: OptimizationRequest, inputs: InputPolicy | None) -> Path | None:
    """The eval-data file the request names, as `inputs` allows it; `inputs` None: no server-side path at all."""
    if request.eval_data is None:
        return None
    if inputs is None:
        raise InvalidInput("eval_data names a file, which this caller may not do: give eval_sha256 of eval data "
                           "already in the artifact store")
    return inputs.resolve("eval_data", request.eval_data)


def validate(session: Session, request: OptimizationRequest, artifacts_root: Path,
             inputs: InputPolicy | None = None) -> tuple[ModelRow, VariantRow, ArtifactRow]:
    """Everything a worker would otherwise find out too late; raises InvalidInput/NotFound, writes nothing.

    `inputs` says which files `eval_data` may name (modelroll/inputs.py): LOCAL for the CLI on its user's machine,
    `InputPolicy.within(settings.effective_input_dir)` for the ops API; None (the default) allows none."""
    eval_path = eval_data_path(request, inputs)
    model_row, variant = resolve_baseline(session, request.model, request.baseline)
    if request.needs_torch and variant.source_artifact_id is None:
        onnx_only = sorted(name for name, t in TECHNIQUES.items() if t.stage == "onnx")
        raise InvalidInput(f"recipe(s) {list(request.needs_torch)} need the torch model of baseline {variant.name!r} "
                           f"of {request.model!r}, which was registered as an ONNX file only: prune, drop-layers and "
                           f"distill change the network itself, and an .onnx file does not carry its torch module; "
                           f"use {onnx_only} on this model (they work on the ONNX file), or start from a built-in "
                           "model whose torch source is stored (digits, digits-cnn, minilm-l6)")
    artifact = session.get(ArtifactRow, variant.artifact_id)
    if artifact is None or artifact.format != "onnx":
        raise InvalidInput(f"baseline {variant.name!r} is not an ONNX artifact: optimization needs an .onnx baseline")
    model_path = artifacts_root / artifact.path
    if eval_path is not None:
        check_eval_data(eval_path, model_path)
    elif request.eval_sha256 is not None:
        store = ArtifactStore(artifacts_root)
        if not store.exists(request.eval_sha256):
            raise NotFound(f"eval data {request.eval_sha256[:12]}… is not in the artifact store: give eval_data")
        check_eval_data(store.path_of(request.eval_sha256), model_path)
    elif request.eval_sha256 is None and not (variant.recipe or {}).get("eval_sha256"):
        raise InvalidInput(f"model {request.model!r} has no eval set of its own: give eval_data (`--eval-data "
                           "FILE.npz` on the CLI), an .npz file with one array per model input, named like the input "
                           "and with the rows on its first axis, and optional 'labels' (one integer per row: accuracy; "
                           "without labels, quality is agreement with the baseline's outputs)")
    return model_row, variant, artifact


def submit_job(session: Session, channel: LiveChannel, request: OptimizationRequest,
               artifacts_root: Path, inputs: InputPolicy | None = None) -> OptimizationJobRow:
    """Validate, store the eval data, commit the job row, then enqueue it (the row is deleted if that fails).

    `inputs`: which files `eval_data` may name, as for `validate`."""
    model_row, variant, _ = validate(session, request, artifacts_root, inputs)
    eval_path = eval_data_path(request, inputs)
    if eval_path is not None:
        stored = ArtifactStore(artifacts_root).put_file(eval_path, "npz")
        request = replace(request, eval_sha256=stored.sha256)
    elif request.eval_sha256 is None:
        request = replace(request, eval_sha256=str(variant.recipe["eval_sha256"]))
    job = OptimizationJobRow(model_id=model_row.id, baseline_variant_id=variant.id, request=request.to_dict(),
                             status="queued", message="queued")
    session.add(job)
    session.commit()
    try:
        queue_id = channel.enqueue_job(QUEUE, orjson.dumps({"job_id": job.id}))
    except Exception as exc:
        session.execute(delete(OptimizationJobRow).where(OptimizationJobRow.id == job.id))
        session.commit()
        if isinstance(exc, ModelrollError):
            raise
        raise Unavailable(f"could not queue optimization job: {exc}") from exc
    job.queue_job_id = queue_id
    session.commit()
    return job


def requeue_orphans(session: Session, channel: LiveChannel, *, older_than_s: float = 60.0,
                    now: datetime | None = None) -> list[int]:
    """Enqueue rows committed by a submitter that died before enqueuing; returns their ids."""
    cutoff = (now or datetime.now(UTC)) - timedelta(seconds=older_than_s)
    ids = session.scalars(select(OptimizationJobRow.id).where(
        OptimizationJobRow.status == "queued", OptimizationJobRow.queue_job_id == "",
        OptimizationJobRow.created_at < cutoff)).all()
    done = []
    for job_id in ids:
        claimed = session.execute(update(OptimizationJobRow).where(
            OptimizationJobRow.id == job_id, OptimizationJobRow.queue_job_id == "").values(queue_job_id="requeued"))
        session.commit()
        if claimed.rowcount:  # type: ignore[attr-defined]
            queue_id = channel.enqueue_job(QUEUE, orjson.dumps({"job_id": job_id}))
            session.execute(update(OptimizationJobRow).where(OptimizationJobRow.id == job_id)
                            .values(queue_job_id=queue_id))
            session.commit()
            done.append(job_id)
    return done
