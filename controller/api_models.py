"""Model, variant, optimization-job and audit endpoints (reads the optimizer's rows, never imports optimizer/)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.api import MAX_ID, NAME_DOC, Ctx, Operator, SafeStr, Viewer
from controller.api_rollouts import CriteriaIn
from controller.transitions import audit
from modelroll import jobs, production
from modelroll.db import (
    ArtifactRow,
    AuditEntryRow,
    CandidateReportRow,
    ModelRow,
    OptimizationJobRow,
    RolloutRow,
    VariantRow,
)
from modelroll.errors import InvalidInput, NotFound
from modelroll.inputs import RELATIVE_NPZ_PATTERN, InputPolicy
from modelroll.recipes import TECHNIQUES
from modelroll.retire import REASON_MAX_CHARS, retire_variant
from modelroll.types import TERMINAL_PHASES, check_name

router = APIRouter()

ModelName = Annotated[str, Path(max_length=63, description="Model name.", json_schema_extra=NAME_DOC)]
JobId = Annotated[int, Path(ge=1, le=MAX_ID, description="Optimization job id.")]
VariantName = Annotated[str, Path(max_length=63, description="Variant name.", json_schema_extra=NAME_DOC)]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _model(session: Session, name: str) -> ModelRow:
    check_name("model", name)
    row = session.scalars(select(ModelRow).where(ModelRow.name == name)).first()
    if row is None:
        known = sorted(session.scalars(select(ModelRow.name)))
        raise NotFound(f"model {name!r} is not registered; registered models: {known}")
    return row


def _variants(session: Session, model: ModelRow, *, include_retired: bool = False) -> list[dict[str, Any]]:
    rows = session.execute(select(VariantRow, ArtifactRow).join(ArtifactRow, ArtifactRow.id == VariantRow.artifact_id)
                           .where(VariantRow.model_id == model.id).order_by(VariantRow.id)).all()
    names = {v.id: v.name for v, _ in rows}
    return [{"name": v.name, "role": v.role, "parent": names.get(v.parent_id) if v.parent_id else None,
             "recipe": v.recipe, "artifact_sha256": a.sha256, "size_bytes": a.size_bytes, "format": a.format,
             "created_at": _iso(v.created_at), "retired_at": _iso(v.retired_at)}
            for v, a in rows if include_retired or v.retired_at is None]


def _model_json(session: Session, model: ModelRow, *, detail: bool) -> dict[str, Any]:
    active = session.scalars(select(RolloutRow.id).where(
        RolloutRow.model_id == model.id, RolloutRow.phase.not_in([p.value for p in TERMINAL_PHASES]))).first()
    serving = production.current_row(session, model.id)
    out: dict[str, Any] = {"name": model.name, "description": model.description,
                           "created_at": _iso(model.created_at), "active_rollout": active,
                           "production": serving[1].name if serving else None,
                           "production_revision": serving[0].revision if serving else None}
    variants = _variants(session, model)
    out["variants"] = variants if detail else [v["name"] for v in variants]
    return out


@router.get("/models", tags=["models"], summary="Registered models with their variants")
def list_models(ctx: Ctx, _: Viewer) -> dict[str, Any]:
    with ctx.session_factory() as session:
        models = session.scalars(select(ModelRow).order_by(ModelRow.name)).all()
        return {"models": [_model_json(session, m, detail=False) for m in models]}


@router.get("/models/{name}", tags=["models"], summary="One model, its variants and active rollout")
def get_model(name: ModelName, ctx: Ctx, _: Viewer) -> dict[str, Any]:
    with ctx.session_factory() as session:
        return _model_json(session, _model(session, name), detail=True)


@router.get("/models/{name}/variants", tags=["models"], summary="Variants of one model (baseline and candidates)")
def list_variants(name: ModelName, ctx: Ctx, _: Viewer, include_retired: Annotated[bool, Query(
        description="Also list retired variants (their `retired_at` is set).")] = False) -> dict[str, Any]:
    with ctx.session_factory() as session:
        return {"variants": _variants(session, _model(session, name), include_retired=include_retired)}


def _job_json(session: Session, job: OptimizationJobRow, *, reports: bool) -> dict[str, Any]:
    model = session.get(ModelRow, job.model_id)
    out: dict[str, Any] = {
        "id": job.id, "model": model.name if model else None, "status": job.status, "progress": job.progress,
        "message": job.message, "error": job.error, "attempts": job.attempts, "request": job.request,
        "created_at": _iso(job.created_at), "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
    }
    if reports:
        rows = session.scalars(select(CandidateReportRow).where(CandidateReportRow.job_id == job.id)
                               .order_by(CandidateReportRow.id))
        out["reports"] = [{
            "name": r.name, "status": r.status, "passed": r.passed, "error": r.error, "recipe": r.recipe,
            "baseline": r.baseline_figures, "candidate": r.candidate_figures, "gates": r.gates, "tries": r.tries,
            "variant": session.get(VariantRow, r.variant_id).name if r.variant_id else None,  # type: ignore[union-attr]
        } for r in rows]
    return out


class OptimizationIn(BaseModel):
    """What POST /v1/optimizations takes; modelroll.jobs.OptimizationRequest checks the rest (each recipe's grammar
    and parameters, the model's eval set) with a message naming what is accepted."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {
        "model": "digits", "techniques": ["int8", "prune:0.5,distill,int8"], "eval_data": "digits/eval.npz"}})
    model: SafeStr = Field(max_length=63, json_schema_extra=NAME_DOC, description="A registered model.")
    baseline: SafeStr | None = Field(default=None, max_length=63, json_schema_extra=NAME_DOC, description=(
        "The variant to optimize; default: the model's newest live baseline."))
    techniques: list[Annotated[str, Field(json_schema_extra={"format": "recipe"})]] = Field(
        default=["int8"], min_length=1, max_length=jobs.MAX_RECIPES, json_schema_extra={"uniqueItems": True},
        description="One recipe per candidate (format `recipe`, at most 500 characters): steps "
                    "`technique[:value][:name=value]` joined by ',', torch steps (prune, drop-layers, distill) before "
                    "at most one quantization (int8, int8-static), e.g. 'int8', 'int8-static:entropy', "
                    "'prune:0.5,distill,int8'. Techniques and their parameters (the first is the bare value's): "
                    + "; ".join(f"{t.name} ({', '.join(f'{p.name}: {p.accepted()}' for p in t.params)})"
                                for t in TECHNIQUES.values()) + ".")
    criteria: CriteriaIn | None = Field(default=None, description="The offline gates; default: the defaults.")
    eval_data: SafeStr | None = Field(default=None, max_length=2200, json_schema_extra={
        "pattern": RELATIVE_NPZ_PATTERN}, description=(
        "An .npz eval set (one array per model input, optional 'labels') by its path relative to the controller's "
        "input root, MODELROLL_INPUT_DIR; no other file is read. Default: the baseline's own eval set."))
    eval_sha256: str | None = Field(default=None, pattern="^[0-9a-f]{64}$", description=(
        "An eval set already in the artifact store (e.g. stored by an earlier job or `modelroll optimize`)."))
    batch_sizes: list[Annotated[int, Field(ge=1, le=jobs.MAX_BATCH_SIZE)]] = Field(
        default=[1, 32], min_length=1, max_length=16, json_schema_extra={"uniqueItems": True},
        description="Batch sizes latency is measured at.")
    threads: int = Field(default=1, ge=1, le=64, description="onnxruntime threads during measurement.")


@router.post("/optimizations", tags=["optimizations"], status_code=202,
             summary="Queue an optimization job for the optimizer's worker")
def create_optimization(ctx: Ctx, who: Operator, body: OptimizationIn) -> dict[str, Any]:
    request = jobs.OptimizationRequest.from_dict(body.model_dump(exclude_none=True))
    if ctx.channel is None:
        raise InvalidInput("this API replica has no live channel to queue jobs on")
    with ctx.session_factory() as session:
        job = jobs.submit_job(session, ctx.channel, request, ctx.settings.effective_artifacts_dir,  # commits
                              InputPolicy.within(ctx.settings.effective_input_dir))
        audit(session, who.actor, "optimization.create", "optimization", job.id, {}, {"request": job.request})
        session.commit()
        return _job_json(session, job, reports=False)


@router.get("/optimizations", tags=["optimizations"], summary="Optimization jobs, newest first")
def list_optimizations(ctx: Ctx, _: Viewer, limit: Annotated[int, Query(ge=1, le=500)] = 100) -> dict[str, Any]:
    with ctx.session_factory() as session:
        rows = session.scalars(select(OptimizationJobRow).order_by(OptimizationJobRow.id.desc()).limit(limit))
        return {"optimizations": [_job_json(session, j, reports=False) for j in rows]}


@router.get("/optimizations/{job_id}", tags=["optimizations"], summary="A job's status, progress and report")
def get_optimization(job_id: JobId, ctx: Ctx, _: Viewer) -> dict[str, Any]:
    with ctx.session_factory() as session:
        job = session.get(OptimizationJobRow, job_id)
        if job is None:
            raise NotFound(f"optimization job {job_id} does not exist; list them with GET /v1/optimizations")
        return _job_json(session, job, reports=True)


@router.get("/audit", tags=["audit"], summary="Every change: who, when, before and after (operator role)")
def list_audit(ctx: Ctx, _: Operator,
               target_kind: Annotated[SafeStr | None, Query(max_length=32)] = None,
               target_id: Annotated[SafeStr | None, Query(max_length=128)] = None,
               limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> dict[str, Any]:
    query = select(AuditEntryRow).order_by(AuditEntryRow.id.desc()).limit(limit)
    if target_kind is not None:
        query = query.where(AuditEntryRow.target_kind == target_kind)
    if target_id is not None:
        query = query.where(AuditEntryRow.target_id == target_id)
    with ctx.session_factory() as session:
        return {"entries": [{"id": a.id, "ts": a.ts.isoformat(), "actor": a.actor, "action": a.action,
                             "target_kind": a.target_kind, "target_id": a.target_id, "before": a.before,
                             "after": a.after} for a in session.scalars(query)]}


class RetireIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: SafeStr = Field(default="", max_length=REASON_MAX_CHARS, description="Why; recorded in the audit.")


@router.post("/models/{name}/variants/{variant}/retire", tags=["models"],
             summary="Retire a variant (operator): it stops serving; gc then frees its artifacts")
def retire(name: ModelName, variant: VariantName, ctx: Ctx, who: Operator,
           body: RetireIn | None = None) -> dict[str, Any]:
    """409 for the production variant, a variant of an unfinished rollout or optimization job; retiring a retired
    variant answers 200 with `already_retired: true` and changes nothing."""
    with ctx.session_factory() as session, session.begin():
        retired = retire_variant(session, name, variant, actor=who.actor, reason=body.reason if body else "")
    return retired.to_dict()
