"""Apply a Model document: register the model from its ONNX file and each variant from its own, idempotently.

A file already registered under that name (same sha256) changes nothing; a different file under a registered name
is refused (what serves never changes behind a name). Which files may be named is the input-path policy's
(modelroll/inputs.py): the CLI reads its user's files (relative to the document's folder), the ops API only files
inside MODELROLL_INPUT_DIR. Runs in the caller's transaction.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelroll import catalog
from modelroll.artifacts import ArtifactStore
from modelroll.db import ArtifactRow, ModelRow, VariantRow
from modelroll.errors import Conflict, ModelrollError
from modelroll.inputs import InputPolicy
from modelroll.manifest import ModelDocument
from modelroll.yaml_lines import FieldPath

_OTHERWISE = "or apply the document with `modelroll apply -f`, which reads the files where it runs"


@dataclass(frozen=True, slots=True)
class ModelApplied:
    name: str
    action: str  # created | configured | unchanged
    changed: tuple[str, ...] = ()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _file(doc: ModelDocument, raw: str, policy: InputPolicy, base_dir: Path | None, where: FieldPath) -> Path:
    if policy.root is None:  # the caller's own machine: relative to the document's folder
        raw = str((base_dir or Path.cwd()) / Path(raw).expanduser())
    path = policy.resolve(doc.at(where), raw, suffix=".onnx", otherwise=_OTHERWISE)
    if not path.is_file():
        raise doc.error(where, f"no file at {str(path)!r} (a relative path is read from the document's folder)")
    try:
        catalog.check_onnx(path)
    except ModelrollError as exc:
        raise doc.error(where, exc.message) from None
    return path


def _same_file(session: Session, doc: ModelDocument, variant: VariantRow, path: Path, where: FieldPath) -> None:
    artifact = session.get(ArtifactRow, variant.artifact_id)
    sha = file_sha256(path)
    if artifact is not None and artifact.sha256 != sha:
        raise Conflict(f"{doc.at(where)}: variant {variant.name!r} of model {doc.name!r} is registered from another "
                       f"file (sha256 {artifact.sha256[:12]}…, this one is {sha[:12]}…): a name keeps its file; "
                       "register the new file under a new variant name")


def apply_model(session: Session, store: ArtifactStore, doc: ModelDocument, *, policy: InputPolicy,
                base_dir: Path | None = None, actor: str, dry_run: bool = False) -> ModelApplied:
    """Register what the document names and is not registered yet; refuse what differs from what is."""
    model = session.scalar(select(ModelRow).where(ModelRow.name == doc.name))
    changed: list[str] = []
    created = model is None
    if doc.path is not None:
        path = _file(doc, doc.path, policy, base_dir, ("spec", "path"))
        if model is None:
            if not dry_run:
                model, _ = catalog.register_model(session, store, path, doc.name, doc.description, actor=actor)
            changed.append("registered")
        else:
            baseline = session.scalars(select(VariantRow).where(
                VariantRow.model_id == model.id, VariantRow.role == "baseline").order_by(
                VariantRow.name != catalog.BASELINE_VARIANT, VariantRow.id)).first()
            if baseline is not None:
                _same_file(session, doc, baseline, path, ("spec", "path"))
    elif model is None:
        raise doc.error(("spec",), f"model {doc.name!r} is not registered: give spec.path, its ONNX file")
    if model is not None and doc.description and model.description != doc.description:
        if not dry_run:
            model.description = doc.description  # at most 2000 characters: the schema holds it
        changed.append("description")
    for index, variant in enumerate(doc.variants):
        where: FieldPath = ("spec", "variants", index, "path")
        path = _file(doc, variant.path, policy, base_dir, where)
        row = None if model is None else session.scalar(select(VariantRow).where(
            VariantRow.model_id == model.id, VariantRow.name == variant.name))
        if row is not None:
            _same_file(session, doc, row, path, where)
            continue
        known = [] if model is None else list(session.scalars(select(VariantRow.name).where(
            VariantRow.model_id == model.id)))
        if model is not None and variant.parent not in known:
            raise doc.error(("spec", "variants", index, "parent"), f"{variant.parent!r} is not a variant of model "
                                                                   f"{doc.name!r}; its variants: {sorted(known)}")
        if not dry_run:
            try:
                catalog.add_variant(session, store, doc.name, variant.name, path, parent=variant.parent,
                                    recipe={"registered_from": path.name})
            except ModelrollError as exc:
                raise type(exc)(f"{doc.at(('spec', 'variants', index))}: {exc.message}") from None
        changed.append(f"variant {variant.name}")
    action = "created" if created else ("configured" if changed else "unchanged")
    return ModelApplied(doc.name, action, tuple(changed))
