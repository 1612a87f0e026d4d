"""Run one optimization job end to end: measure the baseline, build each recipe's candidate with the
accuracy-aware search, measure it with the same evaluator, and record artifact, variant and report row.

Every write of an attempt is fenced by its attempt number (`Fence`): once a newer delivery of the job
has started, the older attempt's writes fail with `Superseded` and change nothing.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from modelroll.artifacts import ArtifactStore, StoredArtifact
from modelroll.catalog import add_variant, stored_artifact_row
from modelroll.db import (
    ArtifactRow,
    CandidateReportRow,
    ModelRow,
    OptimizationJobRow,
    VariantRow,
    make_engine,
    make_session_factory,
)
from modelroll.errors import InvalidInput, NotFound
from modelroll.jobs import OptimizationRequest
from modelroll.settings import Settings
from modelroll.types import Criteria, Role
from optimizer.baselines import load_source
from optimizer.evaluate import (
    EvalConfig,
    EvalSet,
    Measurement,
    Stopped,
    artifact_format,
    evaluate,
    measure_quality,
    runtime_meta,
)
from optimizer.recipes import parse_recipe, recipe_slug, search
from optimizer.report import CandidateReport, JobReport, candidate_from_dict, evaluate_gates, summary
from optimizer.sources import ModelSource

log = logging.getLogger(__name__)


class Superseded(Exception):
    """A newer attempt of this job has started; this attempt must stop writing."""


class JobFailed(Exception):
    """The job cannot succeed whatever the retries (e.g. the baseline itself cannot be measured)."""


@dataclass(frozen=True)
class JobContext:
    settings: Settings
    sessions: sessionmaker[Session]
    store: ArtifactStore
    eval_config: EvalConfig
    cache_dir: Path
    max_tries: int = 4  # builds per recipe in the accuracy back-off


def make_context(settings: Settings, *, eval_config: EvalConfig | None = None) -> JobContext:
    config = eval_config or EvalConfig(timeout_s=settings.eval_timeout_s, max_time_s=settings.eval_max_time_s,
                                       min_runs=settings.eval_min_runs, max_runs=max(3000, settings.eval_min_runs))
    return JobContext(settings=settings, sessions=make_session_factory(make_engine(settings)),
                      store=ArtifactStore.from_settings(settings), eval_config=config,
                      cache_dir=settings.home / "cache")


class Fence:
    """The writes of one attempt; each transaction first checks the row still belongs to this attempt."""

    def __init__(self, sessions: sessionmaker[Session], job_id: int, attempt: int) -> None:
        self.sessions, self.job_id, self.attempt = sessions, job_id, attempt

    @contextmanager
    def transaction(self, **job_values: Any) -> Iterator[Session]:
        with self.sessions() as session, session.begin():
            done = session.execute(update(OptimizationJobRow).where(
                OptimizationJobRow.id == self.job_id, OptimizationJobRow.attempts == self.attempt,
            ).values(updated_at=datetime.now(UTC), **job_values))
            if not done.rowcount:  # type: ignore[attr-defined]
                raise Superseded(f"job {self.job_id} attempt {self.attempt} was superseded")
            yield session

    def progress(self, fraction: float, message: str) -> None:
        with self.transaction(progress=round(min(max(fraction, 0.0), 1.0), 4), message=message):
            pass
        log.info("job=%s attempt=%s progress=%.2f %s", self.job_id, self.attempt, fraction, message)


@dataclass(frozen=True)
class _Inputs:
    request: OptimizationRequest
    model: str
    baseline: VariantRow
    onnx_sha256: str
    torch_artifact: ArtifactRow | None


def _load(session: Session, job_id: int) -> _Inputs:
    job = session.get(OptimizationJobRow, job_id)
    if job is None:
        raise InvalidInput(f"optimization job {job_id} does not exist")
    request = OptimizationRequest.from_dict(job.request)
    if request.eval_sha256 is None:
        raise InvalidInput(f"job {job_id} has no stored eval data (eval_sha256): resubmit it")
    model = session.get(ModelRow, job.model_id)
    baseline = session.get(VariantRow, job.baseline_variant_id)
    artifact = session.get(ArtifactRow, baseline.artifact_id) if baseline else None
    if model is None or baseline is None or artifact is None:
        raise InvalidInput(f"job {job_id}: its model or baseline variant was deleted")
    torch_artifact = session.get(ArtifactRow, baseline.source_artifact_id) if baseline.source_artifact_id else None
    return _Inputs(request, model.name, baseline, artifact.sha256, torch_artifact)


def variant_name(slug: str, job_id: int) -> str:
    suffix = f"-j{job_id}"
    return slug[: 63 - len(suffix)].rstrip("-.") + suffix


def _try_json(t: Any) -> dict[str, Any]:
    return {"index": t.index, "recipe": t.recipe, "action": t.action, "quality": t.quality,
            "quality_drop": t.quality_drop, "float_quality": t.float_quality, "passed": t.passed,
            "steps": [{"step": r.step, "seconds": round(r.seconds, 3), **_jsonable(r.detail)} for r in t.records]}


def _jsonable(detail: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in detail.items():
        if isinstance(value, (str, int, float, bool)) or value is None:
            out[key] = value
        elif isinstance(value, dict):
            out[key] = _jsonable(value)
        elif isinstance(value, (list, tuple)):
            out[key] = [list(v) if isinstance(v, tuple) else v for v in value]
        else:
            out[key] = str(value)
    return out


class JobRun:
    """One attempt of one job; `run` returns the report it also wrote to the database."""

    def __init__(self, ctx: JobContext, job_id: int, attempt: int, stop: threading.Event) -> None:
        self.ctx, self.job_id, self.stop = ctx, job_id, stop
        self.fence = Fence(ctx.sessions, job_id, attempt)
        self._stored: dict[str, StoredArtifact] = {}
        self._names: set[str] = set()
        self._measure_s = 0.0  # one variant's measurement, timed on the baseline: the ETA's unit
        self._try_s: list[float] = []  # every finished try of the back-off (build + quality), in seconds

    def run(self) -> JobReport:
        with self.ctx.sessions() as session:
            inputs = _load(session, self.job_id)
        request = inputs.request
        with self.fence.transaction(error="") as session:  # an earlier attempt's rows are redone from scratch
            session.execute(delete(CandidateReportRow).where(CandidateReportRow.job_id == self.job_id))
        eval_path = self.ctx.store.path_of(request.eval_sha256 or "")
        eval_set = EvalSet.load(eval_path)
        config = replace(self.ctx.eval_config, batch_sizes=request.batch_sizes, threads=request.threads)
        total = 1 + 2 * len(request.techniques)
        self.fence.progress(0.5 / total, "measuring the baseline")
        started = time.monotonic()
        base = evaluate(self.ctx.store.path_of(inputs.onnx_sha256), eval_set, config, label="baseline",
                        stop=self.stop)
        self._measure_s = time.monotonic() - started
        if not base.ok or base.figures is None:
            raise JobFailed(f"the baseline {inputs.baseline.name!r} could not be measured: {base.error}")
        source = load_source(self.ctx.store, inputs.model, inputs.baseline, inputs.onnx_sha256,
                             inputs.torch_artifact, eval_path, self.ctx.cache_dir)
        reports = []
        for index, recipe in enumerate(request.techniques):
            if self.stop.is_set():
                raise Stopped("evaluation stopped: the worker is shutting down")
            report = self._candidate(index, recipe, inputs, source, eval_set, config, base, total)
            self._save(report, inputs)
            reports.append(report)
        best = summary(reports)
        message = (f"{len(reports)} candidate(s); best: {best.name} ({best.variant})" if best
                   else f"{len(reports)} candidate(s); none passes every gate")
        with self.fence.transaction(status="succeeded", progress=1.0, message=message,
                                    finished_at=datetime.now(UTC)):
            pass
        return JobReport(self.job_id, inputs.model, inputs.baseline.name, request.criteria, "succeeded",
                         tuple(reports))

    def _candidate(self, index: int, recipe_text: str, inputs: _Inputs, source: ModelSource, eval_set: EvalSet,
                   config: EvalConfig, base: Measurement, total: int) -> CandidateReport:
        assert base.figures is not None and base.figures.quality is not None
        criteria: Criteria = inputs.request.criteria
        n = len(inputs.request.techniques)
        try:
            recipe = parse_recipe(recipe_text)
        except InvalidInput as exc:
            return CandidateReport(recipe_text[:63], {"recipe": recipe_text}, "failed", base.figures, None,
                                   error=exc.message)
        name = str(recipe)[:63]  # the normalized recipe: unique per job unless two spellings mean the same
        name = name if name not in self._names else f"{name[:58]}#{index + 1}"
        self._names.add(name)

        def quality(path: Path) -> float:
            return measure_quality(path, eval_set, config, reference=base.outputs, stop=self.stop).value

        try_started: list[float] = []

        def on_try(attempt: int, tried: str, why: str) -> None:
            now = time.monotonic()
            if try_started:
                self._try_s.append(now - try_started[-1])
            try_started.append(now)
            per_try = sum(self._try_s) / len(self._try_s) if self._try_s else self._measure_s
            left = per_try + self._measure_s + (n - index - 1) * (per_try + self._measure_s)
            what = f"building {recipe_text} ({index + 1}/{n})" if attempt == 0 else \
                f"building {recipe_text} ({index + 1}/{n}), try {attempt + 1} of at most {self.ctx.max_tries}: " \
                f"{why} ({tried})"
            self.fence.progress((1 + 2 * index + attempt / self.ctx.max_tries) / total,
                                f"{what}; about {left:.0f} s left")

        with tempfile.TemporaryDirectory(prefix="modelroll-build-") as work:
            try:
                found = search(recipe, source, Path(work), quality, baseline_quality=base.figures.quality.value,
                               max_quality_drop=criteria.accuracy_drop_max, max_tries=self.ctx.max_tries,
                               on_try=on_try)
            except (Stopped, Superseded):
                raise
            except Exception as exc:  # a recipe that cannot be built fails its candidate, never the job
                log.warning("job=%s recipe=%s build failed: %s", self.job_id, recipe_text, exc)
                reason = exc.message if isinstance(exc, InvalidInput) else f"{type(exc).__name__}: {exc}"
                return CandidateReport(name, {"recipe": recipe_text}, "failed", base.figures, None,
                                       error=f"could not build: {reason}", variant=None)
            if try_started:
                self._try_s.append(time.monotonic() - try_started[-1])
            tries = tuple(_try_json(t) for t in found.tries)
            chosen = found.best or max(found.tries, key=lambda t: t.quality)
            slug = recipe_slug(parse_recipe(chosen.recipe))
            variant = variant_name(slug if variant_name(slug, self.job_id) not in self._stored else f"{slug}-{index}",
                                   self.job_id)
            meta = {"recipe": chosen.recipe, "requested": recipe_text, "tries": len(found.tries),
                    **runtime_meta(chosen.model_path)}
            self.fence.progress((2 + 2 * index) / total, f"measuring {recipe_text} ({index + 1}/{n})")
            measured = evaluate(chosen.model_path, eval_set, config, reference=base.outputs, label=variant,
                                stop=self.stop)
            if not measured.ok or measured.figures is None:
                return CandidateReport(name, meta, "failed", base.figures, None, error=measured.error, tries=tries)
            self._stored[variant] = self.ctx.store.put_file(chosen.model_path, artifact_format(chosen.model_path))
        gates = evaluate_gates(base.figures, measured.figures, criteria)
        meta["artifact_sha256"] = self._stored[variant].sha256
        return CandidateReport(name, meta, "measured", base.figures, measured.figures, gates, variant=variant,
                               tries=tries)

    def _save(self, report: CandidateReport, inputs: _Inputs) -> None:
        with self.fence.transaction() as session:
            variant_id = None
            if report.variant is not None:
                variant_id = self._variant(session, report, inputs)
            data = report.to_dict()
            session.add(CandidateReportRow(
                job_id=self.job_id, name=report.name, variant_id=variant_id, recipe=dict(report.recipe),
                status=report.status, error=report.error, baseline_figures=data["baseline"],
                candidate_figures=data["candidate"] or {}, gates=data["gates"], passed=report.passed,
                tries=data["tries"],
            ))

    def _variant(self, session: Session, report: CandidateReport, inputs: _Inputs) -> int:
        """The candidate's variant; a retried attempt reuses (and updates) the one an earlier attempt recorded."""
        stored = self._stored[str(report.variant)]
        recipe = {**report.recipe, "job_id": self.job_id}
        existing = session.scalar(select(VariantRow).where(VariantRow.model_id == inputs.baseline.model_id,
                                                           VariantRow.name == report.variant))
        if existing is None:
            row = add_variant(session, self.ctx.store, inputs.model, str(report.variant), stored,
                              role=Role.CANDIDATE, parent=inputs.baseline.name, recipe=recipe)
            return row.id
        existing.artifact_id, existing.recipe = stored_artifact_row(session, stored).id, recipe
        return existing.id


def load_report(session: Session, job_id: int) -> JobReport:
    """The report of job `job_id` as stored: its status and every candidate row written so far."""
    job = session.get(OptimizationJobRow, job_id)
    if job is None:
        raise NotFound(f"optimization job {job_id} does not exist: list them with `modelroll optimize list` "
                       "(GET /v1/optimizations)")
    model = session.get(ModelRow, job.model_id)
    baseline = session.get(VariantRow, job.baseline_variant_id)
    request = OptimizationRequest.from_dict(job.request)
    rows = session.scalars(select(CandidateReportRow).where(CandidateReportRow.job_id == job_id)
                           .order_by(CandidateReportRow.id)).all()
    candidates = []
    for row in rows:
        variant = session.get(VariantRow, row.variant_id) if row.variant_id is not None else None
        candidates.append(candidate_from_dict({
            "name": row.name, "variant": variant.name if variant else None, "recipe": row.recipe,
            "status": row.status, "error": row.error, "baseline": row.baseline_figures,
            "candidate": row.candidate_figures or None, "gates": row.gates, "tries": row.tries,
        }))
    return JobReport(job_id, model.name if model else "?", baseline.name if baseline else "?", request.criteria,
                     job.status, tuple(candidates), error=job.error)


def run_job(ctx: JobContext, job_id: int, attempt: int, stop: threading.Event) -> JobReport:
    """Run attempt `attempt` of job `job_id` (the worker has set the row's attempts to it)."""
    return JobRun(ctx, job_id, attempt, stop).run()
