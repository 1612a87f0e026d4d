"""Models and their variants: register an ONNX file as a model's baseline, record candidates, list them.

Shared by the CLI and the ops API. Functions run inside the caller's transaction
(`with session.begin(): ...`) and only flush, so any failure leaves nothing written.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from modelroll import production
from modelroll.artifacts import ArtifactStore, StoredArtifact
from modelroll.db import ArtifactRow, CandidateReportRow, ModelRow, ProductionRevisionRow, VariantRow
from modelroll.errors import Conflict, InvalidInput, NotFound
from modelroll.types import Role, check_name

BASELINE_VARIANT = "baseline"
DESCRIPTION_MAX_CHARS = 2000


@dataclass(frozen=True, slots=True)
class VariantInfo:
    id: int
    model: str
    name: str
    role: str
    format: str
    size_bytes: int
    sha256: str
    relpath: str
    parent: str | None
    recipe: Mapping[str, Any]
    created_at: datetime
    retired: bool = False


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: int
    name: str
    description: str
    created_at: datetime
    variants: tuple[VariantInfo, ...]
    production: str | None = None  # the variant that serves outside a rollout


def _when(value: datetime) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S} UTC"


def check_onnx(path: Path) -> None:
    """Refuse a missing file, a folder, or bytes that onnx's checker rejects, with the checker's reason."""
    if not path.exists():
        raise InvalidInput(f"no file at {path}")
    if not path.is_file():
        raise InvalidInput(f"{path} is not a file; modelroll accepts ONNX files (.onnx)")
    import onnx  # ~0.1 s to import: only verbs that register pay for it

    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:  # the checker's C++ layer raises several types; every one means "not valid ONNX"
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise InvalidInput(
            f"{path} is not a valid ONNX model: {reason}; modelroll accepts ONNX files (.onnx)"
        ) from None


def store_onnx(store: ArtifactStore, path: Path) -> StoredArtifact:
    """Store an ONNX model as one file: weights kept beside it as external data (what torch.onnx.export writes by
    default, `model.onnx.data`) are folded into the stored file, so the artifact is whole wherever it is loaded."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    if not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        return store.put_file(path, "onnx")
    try:
        onnx.load_external_data_for_model(model, str(Path(path).parent))
        data = model.SerializeToString()
    except (OSError, ValueError) as exc:  # a missing data file, or a whole over protobuf's 2 GiB
        raise InvalidInput(f"{path} keeps its weights in external data that cannot be folded into one file "
                           f"({exc}): keep the data file beside it, under 2 GiB in all") from None
    return store.put_bytes(data, "onnx")


def _variant_row(session: Session, model: ModelRow, name: str) -> VariantRow:
    row = session.scalar(select(VariantRow).where(VariantRow.model_id == model.id, VariantRow.name == name))
    if row is None:
        known = session.scalars(
            select(VariantRow.name).where(VariantRow.model_id == model.id).order_by(VariantRow.id)
        ).all()
        raise NotFound(f"model {model.name!r} has no variant {name!r}: its variants are {', '.join(known) or 'none'}")
    return row


def stored_artifact_row(session: Session, stored: StoredArtifact) -> ArtifactRow:
    """The row for this content (flushed, so it has its id), shared by every variant whose bytes are identical."""
    row = session.scalar(select(ArtifactRow).where(ArtifactRow.sha256 == stored.sha256))
    if row is None:
        row = ArtifactRow(sha256=stored.sha256, size_bytes=stored.size_bytes, format=stored.format,
                          path=stored.relpath)
        session.add(row)
        _flush(session, f"artifact {stored.sha256[:12]}…")
    return row


def newest_report(session: Session, variant_id: int) -> CandidateReportRow | None:
    """The optimizer's newest report on a variant; None for a variant registered by hand."""
    return session.scalars(select(CandidateReportRow).where(CandidateReportRow.variant_id == variant_id)
                           .order_by(CandidateReportRow.id.desc())).first()


def _flush(session: Session, what: str) -> None:
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(f"{what} was registered at the same time by someone else: list again and retry") from None


def _check_description(description: str) -> str:
    if not isinstance(description, str) or len(description) > DESCRIPTION_MAX_CHARS:
        raise InvalidInput(f"description must be text of at most {DESCRIPTION_MAX_CHARS} characters")
    return description


def register_model(session: Session, store: ArtifactStore, path: Path, name: str,
                   description: str = "", actor: str = "cli") -> tuple[ModelRow, VariantRow]:
    """Record an ONNX file as model `name` with its baseline variant, its first production revision; the file
    goes into the store."""
    check_name("model", name)
    _check_description(description)
    path = Path(path)
    check_onnx(path)
    existing = session.scalar(select(ModelRow).where(ModelRow.name == name))
    if existing is not None:
        raise Conflict(f"model {name!r} already exists (registered {_when(existing.created_at)}); pick another name")
    stored = store_onnx(store, path)
    artifact = stored_artifact_row(session, stored)
    model = ModelRow(name=name, description=description)
    session.add(model)
    _flush(session, f"model {name!r}")
    variant = VariantRow(model_id=model.id, name=BASELINE_VARIANT, role=Role.BASELINE.value,
                         artifact_id=artifact.id, recipe={})
    session.add(variant)
    _flush(session, f"model {name!r}")
    production.set_production(session, model, variant, action=production.REGISTERED, actor=actor,
                              reason="registered")
    return model, variant


def add_variant(session: Session, store: ArtifactStore, model: str, name: str, artifact: Path | StoredArtifact,
                role: Role | str = Role.CANDIDATE, parent: str | None = BASELINE_VARIANT,
                recipe: Mapping[str, Any] | None = None, fmt: str = "onnx",
                source: StoredArtifact | None = None) -> VariantRow:
    """Record a variant of `model` built from `parent` by `recipe` (a file to store, or an artifact already stored).

    `source` is the artifact it was built from when that is not the parent's own (e.g. a torch checkpoint).
    """
    check_name("variant", name)
    try:
        role = Role(role)
    except ValueError:
        raise InvalidInput(f"role {role!r} is not valid: use one of {[r.value for r in Role]}") from None
    if role is Role.CANDIDATE and parent is None:
        raise InvalidInput(f"candidate {name!r} needs a parent variant (the variant it was built from)")
    recipe_dict = dict(recipe or {})
    try:
        json.dumps(recipe_dict)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"recipe of variant {name!r} must be JSON (numbers, text, lists, objects): {exc}") from None
    model_row = production.model_row(session, model)
    parent_row = _variant_row(session, model_row, parent) if parent is not None else None
    clash = session.scalar(select(VariantRow).where(VariantRow.model_id == model_row.id, VariantRow.name == name))
    if clash is not None:
        raise Conflict(
            f"variant {name!r} of model {model!r} already exists (registered {_when(clash.created_at)}); "
            "pick another name"
        )
    if isinstance(artifact, StoredArtifact):
        if not store.exists(artifact.sha256):
            raise NotFound(f"artifact {artifact.sha256[:12]}… is not in the artifact store: store it before recording")
        stored = artifact
    else:
        if fmt == "onnx":
            check_onnx(Path(artifact))
        stored = store.put_file(Path(artifact), fmt)
    artifact_row = stored_artifact_row(session, stored)
    source_row = stored_artifact_row(session, source) if source is not None else None
    variant = VariantRow(model_id=model_row.id, name=name, role=role.value, artifact_id=artifact_row.id,
                         source_artifact_id=source_row.id if source_row is not None else None,
                         parent_id=parent_row.id if parent_row is not None else None, recipe=recipe_dict)
    session.add(variant)
    _flush(session, f"variant {name!r} of model {model!r}")
    return variant


def _variants(session: Session, model_ids: Sequence[int]) -> dict[int, list[VariantInfo]]:
    if not model_ids:
        return {}
    rows = session.execute(
        select(VariantRow, ArtifactRow, ModelRow.name)
        .join(ArtifactRow, VariantRow.artifact_id == ArtifactRow.id)
        .join(ModelRow, VariantRow.model_id == ModelRow.id)
        .where(VariantRow.model_id.in_(model_ids))
        .order_by(VariantRow.id)
    ).all()
    names = {variant.id: variant.name for variant, _, _ in rows}
    found: dict[int, list[VariantInfo]] = {model_id: [] for model_id in model_ids}
    for variant, artifact, model_name in rows:
        found[variant.model_id].append(VariantInfo(
            id=variant.id, model=model_name, name=variant.name, role=variant.role, format=artifact.format,
            size_bytes=artifact.size_bytes, sha256=artifact.sha256, relpath=artifact.path,
            parent=names.get(variant.parent_id) if variant.parent_id is not None else None,
            recipe=dict(variant.recipe), created_at=variant.created_at, retired=variant.retired_at is not None,
        ))
    return found


def _info(row: ModelRow, variants: list[VariantInfo], serving: Mapping[str, str]) -> ModelInfo:
    return ModelInfo(id=row.id, name=row.name, description=row.description, created_at=row.created_at,
                     variants=tuple(variants), production=serving.get(row.name))


def list_models(session: Session) -> list[ModelInfo]:
    """Every model by name, each with its variants in the order they were recorded and its production variant."""
    rows = session.scalars(select(ModelRow).order_by(ModelRow.name)).all()
    variants = _variants(session, [row.id for row in rows])
    serving = production.serving(session)
    return [_info(row, variants[row.id], serving) for row in rows]


def get_model(session: Session, name: str) -> ModelInfo:
    row = production.model_row(session, name)
    return _info(row, _variants(session, [row.id])[row.id], production.serving(session))


def get_variant(session: Session, model: str, variant: str) -> VariantInfo:
    info = get_model(session, model)
    for candidate in info.variants:
        if candidate.name == variant:
            return candidate
    known = ", ".join(v.name for v in info.variants) or "none"
    raise NotFound(f"model {model!r} has no variant {variant!r}: its variants are {known}")


def marks(session: Session) -> dict[str, tuple[int, int, int]]:
    """Per model, a mark that changes whenever its catalog does (a variant added or retired, a new production
    revision): cheap enough for the leader to poll several times a second."""
    variants = session.execute(
        select(ModelRow.name, func.max(VariantRow.id), func.count(VariantRow.retired_at))
        .join(VariantRow, VariantRow.model_id == ModelRow.id).group_by(ModelRow.name)).all()
    revisions = dict(session.execute(
        select(ModelRow.name, func.max(ProductionRevisionRow.revision))
        .join(ProductionRevisionRow, ProductionRevisionRow.model_id == ModelRow.id).group_by(ModelRow.name)).all())
    return {name: (int(newest), int(retired), int(revisions.get(name) or 0)) for name, newest, retired in variants}
