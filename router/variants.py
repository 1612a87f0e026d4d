"""Where a model's variants come from (a `VariantSource`) and how one is loaded into a runner.

Loading is start-up or split-change work, never per request: the catalog source reads the
database rows and gives each variant its stored file and recorded sha256, which every runner checks
on every load and restart (modelroll/integrity.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from modelroll.errors import NotFound
from modelroll.runtimes import SERVABLE_FORMATS
from router.runners import InlineRunner, Runner


@dataclass(frozen=True, slots=True)
class VariantSpec:
    """How to run one variant: a local ONNX file, or a remote V2 server (`url` + `remote_model`)."""

    model: str
    name: str
    role: str = "candidate"  # baseline | candidate
    path: Path | None = None
    url: str | None = None
    remote_model: str | None = None
    runner: str | None = None  # inline | subprocess; None = the router's default
    production: bool = False  # what serves outside a rollout (the catalog's production variant)
    locate: Callable[[], Path] | None = field(default=None, compare=False)  # the file, resolved at load time
    sha256: str | None = None  # the artifact's recorded hash: the runner loads the file only if it matches
    format: str = "onnx"  # onnx (onnxruntime) | openvino (an IR folder, stored as a tar)
    built_with: str | None = None  # the runtime version the artifact was built with (checked before loading)


class VariantSource(Protocol):
    def models(self) -> list[str]:
        """Models the router serves."""

    def variants(self, model: str) -> list[VariantSpec]:
        """Every variant of `model` (raises NotFound for an unknown model)."""


class StaticVariantSource:
    """Variants given up front (tests, the bench, a router started on plain ONNX files)."""

    def __init__(self, specs: Sequence[VariantSpec]) -> None:
        self._by_model: dict[str, list[VariantSpec]] = {}
        for spec in specs:
            self._by_model.setdefault(spec.model, []).append(spec)

    def add(self, spec: VariantSpec) -> None:
        self._by_model.setdefault(spec.model, []).append(spec)

    def models(self) -> list[str]:
        return sorted(self._by_model)

    def variants(self, model: str) -> list[VariantSpec]:
        if model not in self._by_model:
            raise NotFound(f"model {model!r} is unknown; known models: {self.models()}")
        return list(self._by_model[model])


class CatalogVariantSource:
    """Variants registered in the database, with artifacts located by the store and hash-checked by the runner."""

    def __init__(self, session_factory: Any, store: Any) -> None:
        self._sessions = session_factory
        self._store = store

    def models(self) -> list[str]:
        from sqlalchemy import select

        from modelroll.db import ModelRow

        with self._sessions() as session:
            return sorted(session.scalars(select(ModelRow.name)).all())

    def variants(self, model: str) -> list[VariantSpec]:
        from sqlalchemy import select

        from modelroll import production
        from modelroll.db import ArtifactRow, ModelRow, VariantRow

        with self._sessions() as session:
            model_row = session.scalars(select(ModelRow).where(ModelRow.name == model)).one_or_none()
            if model_row is None:
                raise NotFound(f"model {model!r} is not registered")
            rows = session.execute(
                select(VariantRow.name, VariantRow.role, ArtifactRow.sha256, ArtifactRow.format, VariantRow.recipe)
                .join(ArtifactRow, ArtifactRow.id == VariantRow.artifact_id)
                .where(VariantRow.model_id == model_row.id, VariantRow.retired_at.is_(None))
            ).all()
            serving = production.current_row(session, model_row.id)
        serving_name = serving[1].name if serving is not None else None
        # The hash check reads the whole file: done by the runner, on the bytes it loads, for the variants loaded.
        return [
            VariantSpec(model=model, name=name, role=role, locate=partial(self._store.stored_path, sha),
                        sha256=sha, production=name == serving_name, format=fmt,
                        built_with=(recipe or {}).get("runtime_version") if fmt != "onnx" else None)
            for name, role, sha, fmt, recipe in rows if fmt in SERVABLE_FORMATS
        ]


def load_runner(spec: VariantSpec, default_runner: str, threads: int,
                on_refused: Callable[[str], None] | None = None) -> Runner:
    """Start the runner for one variant (may take seconds: start-up and split changes only); `on_refused` is
    called if a later restart of the runner finds its artifact changed (it then serves no more)."""
    if spec.url is not None:
        from router.runner_http import HttpRunner

        return HttpRunner(spec.url, spec.remote_model or spec.model)
    path = spec.path if spec.path is not None else spec.locate() if spec.locate is not None else None
    if path is None:
        raise NotFound(f"variant {spec.name!r} of model {spec.model!r} has neither a file nor a URL")
    kind = spec.runner or default_runner
    if spec.format == "openvino":
        from router.runner_openvino import load_openvino

        return load_openvino(Path(path), kind, threads, model=spec.model, name=spec.name, sha256=spec.sha256,
                             built_with=spec.built_with, on_refused=on_refused)
    if kind == "subprocess":
        from router.runner_subprocess import SubprocessRunner

        return SubprocessRunner(Path(path), threads, sha256=spec.sha256, on_refused=on_refused)
    return InlineRunner(Path(path), threads, sha256=spec.sha256)


def baseline_of(specs: Sequence[VariantSpec]) -> VariantSpec | None:
    """The variant that serves when no split is published: the production variant; for a source that records
    none (static files), role baseline, preferring the name 'baseline'."""
    serving = [s for s in specs if s.production]
    if serving:
        return serving[0]
    named = [s for s in specs if s.name == "baseline"]
    if named:
        return named[0]
    by_role = [s for s in specs if s.role == "baseline"]
    return by_role[0] if by_role else None


def index(specs: Sequence[VariantSpec]) -> Mapping[str, VariantSpec]:
    return {s.name: s for s in specs}
