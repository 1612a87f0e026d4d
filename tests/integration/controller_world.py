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
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from controller.app import create_app
from controller.auth import create_token
from controller.reconcile import Reconciler
from modelroll import migrate
from modelroll.db import ArtifactRow, Base, ModelRow, VariantRow, make_engine, make_session_factory
from modelroll.live import open_channel
from modelroll.live.base import LiveChannel, Sample
from modelroll.settings import Settings


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
        session.add(VariantRow(model_id=m.id, name="int8", role="candidate", artifact_id=a2.id, parent_id=base.id))


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
                                  step=step, memory_bytes=int(rng.normal(mem, mem * 0.01))))
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
