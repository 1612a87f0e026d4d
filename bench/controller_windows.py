"""Reconcile-tick reads: the controller's window cache against reading every window of the rollout each tick.

A rollout that has run for `--minutes` (10-second windows, two arms, `--per-window` latencies each) in
PostgreSQL; each simulated tick merges one new window per arm (what the fold writes), then reads the
rollout's windows, both ways, alternating, in one run. Prints time per tick and the ratio.
Run: .venv/bin/python bench/controller_windows.py [--minutes 60] [--per-window 200] [--ticks 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import func, update

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controller import aggregate
from modelroll.db import (
    ArtifactRow,
    Base,
    ModelRow,
    RolloutRow,
    SampleWindowRow,
    VariantRow,
    make_session_factory,
)
from modelroll.live.base import Sample
from tests import services


def samples(rollout_id: int, start: float, n: int, rng: np.random.Generator) -> list[Sample]:
    out = []
    for variant, mean in (("fp32", 10.0), ("int8", 3.0)):
        out += [Sample(kind="request", model="m", variant=variant, ts=start + i * 0.001, rollout_id=rollout_id,
                       step=0, request_id=f"{variant}{start}{i}", latency_ms=float(x), status="ok")
                for i, x in enumerate(rng.normal(mean, mean / 10, n))]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--per-window", type=int, default=200)
    parser.add_argument("--ticks", type=int, default=20)
    args = parser.parse_args()

    import psycopg
    from sqlalchemy import create_engine

    services.ensure_postgres()
    admin = services.pg_admin_url()
    name = f"modelroll_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    engine = create_engine(admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}")
    try:
        Base.metadata.create_all(engine)
        sessions = make_session_factory(engine)
        with sessions() as session, session.begin():
            model = ModelRow(name="m")
            session.add(model)
            session.flush()
            artifact = ArtifactRow(sha256="0" * 64, size_bytes=1, format="onnx", path="x")
            session.add(artifact)
            session.flush()
            arms = [VariantRow(model_id=model.id, name=n, role=r, artifact_id=artifact.id)
                    for n, r in (("fp32", "baseline"), ("int8", "candidate"))]
            session.add_all(arms)
            session.flush()
            rollout = RolloutRow(model_id=model.id, baseline_variant_id=arms[0].id, candidate_variant_id=arms[1].id,
                                 phase="progressing", version=1)
            session.add(rollout)
            session.flush()
            rollout_id = rollout.id
        route = aggregate.Route(rollout_id, "m", "fp32", "int8", 0)
        rng = np.random.default_rng(7)
        t0 = datetime.now(UTC).timestamp() // aggregate.WINDOW_S * aggregate.WINDOW_S
        windows = args.minutes * 6

        def write(start: float) -> None:
            folded, _ = aggregate.fold(samples(rollout_id, start, args.per_window, rng), {rollout_id: route},
                                       {"m": route})
            with sessions() as session, session.begin():
                aggregate.store(session, folded, None)

        for k in range(windows):
            write(t0 - (windows - k) * aggregate.WINDOW_S)
        with sessions() as session, session.begin():  # written over the past `minutes`, not in the last seconds
            session.execute(update(SampleWindowRow).values(
                updated_at=func.now() - timedelta(minutes=args.minutes)))
        cache = aggregate.WindowCache()
        with sessions() as session:
            cache.load(session, rollout_id)  # a new leader's first tick reads everything once
        full_s: list[float] = []
        cached_s: list[float] = []
        for tick in range(args.ticks):
            write(t0 + tick * aggregate.WINDOW_S)
            order = [(full_s, lambda s: aggregate.load_windows(s, rollout_id)),
                     (cached_s, lambda s: cache.load(s, rollout_id))]
            for times, read in order if tick % 2 == 0 else reversed(order):
                with sessions() as session:
                    started = time.perf_counter()
                    rows = read(session)
                    times.append(time.perf_counter() - started)
                    assert len(rows) == 2 * (windows + tick + 1)
        full, cached = statistics.median(full_s), statistics.median(cached_s)
        print(f"rollout of {args.minutes} min: {2 * windows} windows, {args.per_window} latencies each; "
              f"{args.ticks} ticks, one new window per arm each")
        print(f"  every window each tick: {full * 1000:8.1f} ms per tick (median)")
        print(f"  window cache:           {cached * 1000:8.1f} ms per tick (median; read {cache.last_read} windows "
              f"on the last tick)")
        print(f"  ratio: the cache reads {full / cached:.0f}x faster")
    finally:
        engine.dispose()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
