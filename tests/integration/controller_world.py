"""A controller world for integration tests: a fresh PostgreSQL schema with one model, a Redis channel, tokens."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy import delete, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from controller.app import create_app
from controller.auth import create_token
from controller.reconcile import Reconciler
from modelroll import migrate, production
from modelroll.db import (
    ArtifactRow,
    Base,
    CandidateReportRow,
    ModelRow,
    OptimizationJobRow,
    VariantRow,
    make_engine,
    make_session_factory,
)
from modelroll.figures import Figures, LatencyFigures, MemoryFigures, QualityFigures
from modelroll.live import open_channel
from modelroll.live.base import LiveChannel, Sample
from modelroll.settings import Settings
from modelroll.types import Criteria
from optimizer.report import CandidateReport, evaluate_gates


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class World:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    channel: LiveChannel
    tokens: dict[str, str] = field(default_factory=dict)
    clock: Clock = field(default_factory=Clock)

    def client(self, **kw: Any) -> TestClient:
        return TestClient(create_app(self.settings, self.channel, self.session_factory, **kw))

    def reconciler(self, holder: str = "test-leader", **kw: Any) -> Reconciler:
        return Reconciler(self.settings, self.channel, self.session_factory, holder=holder, clock=self.clock, **kw)

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


def seed(session_factory: sessionmaker[Session], model: str = "digits") -> None:
    with session_factory() as session, session.begin():
        m = ModelRow(name=model, description="digits MLP")
        session.add(m)
        a1 = ArtifactRow(sha256="a" * 64, size_bytes=1000, format="onnx", path="a")
        a2 = ArtifactRow(sha256="b" * 64, size_bytes=300, format="onnx", path="b")
        session.add_all([a1, a2])
        session.flush()
        base = VariantRow(model_id=m.id, name="fp32", role="baseline", artifact_id=a1.id)
        session.add(base)
        session.flush()
        int8 = VariantRow(model_id=m.id, name="int8", role="candidate", artifact_id=a2.id, parent_id=base.id)
        session.add(int8)
        session.flush()
        production.set_production(session, m, base, action=production.REGISTERED, actor="test", reason="seed")
        # int8 passed its offline gates (a rollout of a candidate that did not needs force)
        job = OptimizationJobRow(model_id=m.id, baseline_variant_id=base.id, request={}, status="succeeded",
                                 progress=1.0)
        session.add(job)
        session.flush()
        session.add(CandidateReportRow(job_id=job.id, name="int8", variant_id=int8.id, recipe={}, status="measured",
                                       gates={"latency_p50": {"passed": True}}, passed=True, tries=[]))


def make_world(pg_url: str, redis_url: str, redis_prefix: str, **overrides: Any) -> Iterator[World]:
    settings = Settings(database_url=pg_url, redis_url=redis_url, redis_prefix=redis_prefix,
                        allow_anonymous_viewer=False, admin_token="", **overrides)
    engine = make_engine(settings)
    # The models' schema, stamped at head so `ensure_schema` (CLI verbs) leaves it be; the migrations'
    # own tests prove that upgrade head builds the same schema.
    Base.metadata.create_all(engine)
    command.stamp(migrate.alembic_config(settings), "head")
    factory = make_session_factory(engine)
    seed(factory)
    channel = open_channel(settings)
    world = World(settings, engine, factory, channel)
    with factory() as session, session.begin():
        for role in ("viewer", "operator", "admin"):
            world.tokens[role] = create_token(session, f"{role}-1", role)
    try:
        yield world
    finally:
        channel.close()
        engine.dispose()


_ids = itertools.count()


def good_samples(rollout_id: int, step: int, n: int, ts: float, *, shadow: bool, seed: int = 0,
                 candidate_error_rate: float = 0.0, baseline: bool = True) -> list[Sample]:
    """Samples of a candidate 3× faster and 5× smaller than its baseline, equally accurate (shadow pairs)."""
    rng = np.random.default_rng(seed)
    out: list[Sample] = []
    for i in range(n):
        rid = f"r{next(_ids)}"
        t = ts + i * 0.001
        if baseline:
            out.append(Sample(kind="request", model="digits", variant="fp32", ts=t, rollout_id=rollout_id, step=step,
                              request_id=rid, latency_ms=float(rng.normal(10, 1)), status="ok"))
        failed = rng.random() < candidate_error_rate
        out.append(Sample(kind="request", model="digits", variant="int8", ts=t, rollout_id=rollout_id, step=step,
                          request_id=rid, latency_ms=0.0 if failed else float(rng.normal(3, 0.3)),
                          status="error" if failed else "ok", shadow=shadow))
        if shadow and not failed:
            right = bool(rng.random() < 0.95)
            out.append(Sample(kind="feedback", model="digits", variant="fp32", ts=t, rollout_id=rollout_id,
                              step=step, request_id=rid, correct=right))
            out.append(Sample(kind="feedback", model="digits", variant="int8", ts=t, rollout_id=rollout_id,
                              step=step, request_id=rid, correct=right, shadow=True))
        if i % 20 == 0:
            for variant, mem in (("fp32", 100e6), ("int8", 20e6)):
                if variant == "fp32" and not baseline:
                    continue
                out.append(Sample(kind="memory", model="digits", variant=variant, ts=t, rollout_id=rollout_id,
                                  step=step, memory_bytes=int(rng.normal(mem, mem * 0.01)), runner="subprocess",
                                  memory_exact=True))
    return out


def own_database(pg_admin_url: str) -> Iterator[str]:
    """A fresh database for a whole module (pg_url is per test); dropped after."""
    import uuid

    import psycopg

    name = f"modelroll_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield pg_admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def drop_reports(world: World) -> None:
    """int8 as a variant registered by hand: no optimizer report (rolling it out needs force)."""
    with world.session_factory() as session, session.begin():
        session.execute(delete(CandidateReportRow))


def start_rollout(world: World, holder: str = "test-leader", *, force: bool = False) -> int:
    """A started rollout (shadow, then 100 %) with 1500 shadow pairs evaluated: results, windows, events."""
    with world.client() as client:
        r = client.post("/v1/rollouts", headers=world.auth("operator"), json={
            "model": "digits", "baseline": "fp32", "candidate": "int8", "force": force,
            "steps": [{"weight_pct": 0, "shadow": True, "min_duration_s": 600, "min_samples": 100},
                      {"weight_pct": 100, "min_duration_s": 0, "min_samples": 100}]})
        assert r.status_code == 201, r.text
        rollout_id = int(r.json()["id"])
    reconciler = world.reconciler(holder)
    assert reconciler.elector.poll() is not None, "the test reconciler could not take the leader lock"
    reconciler.tick()
    world.channel.append_samples(good_samples(rollout_id, 0, 1500, world.clock.now.timestamp(), shadow=True))
    reconciler.tick()
    return rollout_id


def add_report(world: World) -> CandidateReport:
    """An optimizer report for int8 stored the way the worker stores one (optimizer's own types and gates):
    faster on every latency gate, but its memory misses the 60 % gate at batch 32."""

    def figures(latency_ms: float, memory_mib: tuple[float, float], size_bytes: int, accuracy: float) -> Figures:
        return Figures(
            size_bytes=size_bytes,
            latency=tuple(LatencyFigures(b, latency_ms * b, latency_ms * b * 1.5, latency_ms * b * 2,
                                         latency_ms * b * 1.1, latency_ms * b, 100, True) for b in (1, 32)),
            memory=tuple(MemoryFigures(b, int(m * 2**20), int(m * 2**20) + 50 * 2**20)
                         for b, m in zip((1, 32), memory_mib, strict=True)),
            quality=QualityFigures("accuracy", 540, accuracy=accuracy), runtime_bytes=50 * 2**20, load_ms=30.0,
            threads=1, onnxruntime="test")

    base = figures(2.0, (80.0, 80.0), 48 * 2**20, 0.9722)
    cand = figures(0.5, (20.0, 40.0), 3 * 2**20, 0.9685)
    report = CandidateReport("prune,int8", {"recipe": "prune,int8", "requested": "prune:0.5,int8"}, "measured",
                             base, cand, evaluate_gates(base, cand, Criteria()), variant="int8")
    data = report.to_dict()
    with world.session_factory() as session, session.begin():
        variant = session.scalars(select(VariantRow).where(VariantRow.name == "int8")).one()
        job = OptimizationJobRow(model_id=variant.model_id, baseline_variant_id=variant.parent_id,
                                 request={}, status="succeeded", progress=1.0)
        session.add(job)
        session.flush()
        session.add(CandidateReportRow(job_id=job.id, name=data["name"], variant_id=variant.id,
                                       recipe=data["recipe"], status=data["status"],
                                       baseline_figures=data["baseline"], candidate_figures=data["candidate"],
                                       gates=data["gates"], passed=data["passed"], tries=[]))
    return report
