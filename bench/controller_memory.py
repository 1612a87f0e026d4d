"""The controller's memory per request of an active rollout: what its window cache holds, and what the process keeps.

A real Reconciler on PostgreSQL + Redis (leading, in this process) with one rollout in its shadow step: three minutes
of 40 req/s of shadow requests are folded first, then `--ticks` reconcile ticks each fold `--per-tick` more (both
arms' answers and labels, 32-hex request ids) and evaluate the rollout. Printed: the bytes a request costs in the
window cache (tracemalloc: the compact windows, beside the rows' decoded JSON it held before), and the process's
RSS growth per request over the ticks, with glibc's default mmap threshold and with controller/heap.py's fixed
one, each in a fresh process.
Run: .venv/bin/python bench/controller_memory.py [--ticks 1000] [--per-tick 40]
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
import tracemalloc
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controller import aggregate
from modelroll.live.base import Sample
from tests import services
from tests.integration.controller_world import World, make_world

PREFILL_S = 180
PREFILL_RATE = 40
REDIS_URL = f"redis://{services.REDIS_HOST}:{services.REDIS_PORT}/0"


def shadow(rollout_id: int, n: int, ts: float, rng: np.random.Generator) -> list[Sample]:
    out = []
    for i in range(n):
        request_id = uuid.uuid4().hex
        for variant, latency_ms, shadow in (("fp32", 10.0, False), ("int8", 3.0, True)):
            common = {"model": "digits", "variant": variant, "ts": ts + i * 0.001, "rollout_id": rollout_id,
                      "step": 0, "request_id": request_id, "shadow": shadow}
            out.append(Sample(kind="request", latency_ms=float(rng.normal(latency_ms, 1.0)), status="ok",
                              **common))  # type: ignore[arg-type]
            out.append(Sample(kind="feedback", correct=bool(rng.random() < 0.9), **common))  # type: ignore[arg-type]
    return out


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def held(world: World, rollout_id: int, compact: bool) -> int:
    """Bytes the windows of the rollout hold once read: compact (the cache now) or as rows (the cache before)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        with world.session_factory() as session:
            kept = aggregate.WindowCache().load(session, rollout_id) if compact \
                else aggregate.load_windows(session, rollout_id)
        gc.collect()
        assert kept, "no windows"  # alive until measured
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def child(mode: str, ticks: int, per_tick: int, pg_url: str, redis_prefix: str) -> dict[str, float]:
    if mode == "fixed":
        from controller.heap import return_large_frees

        assert return_large_frees(), "glibc's mmap threshold could not be fixed"
    world = next(make_world(pg_url, REDIS_URL, redis_prefix, leader_lease_s=3600))
    with world.client() as client:
        r = client.post("/v1/rollouts", headers=world.auth("operator"), json={
            "model": "digits", "baseline": "fp32", "candidate": "int8",
            "steps": [{"weight_pct": 0, "shadow": True, "min_duration_s": 36_000, "min_samples": 100},
                      {"weight_pct": 100, "min_duration_s": 0, "min_samples": 100}]})
        rollout_id = int(r.json()["id"])
    reconciler = world.reconciler("bench")
    reconciler.clock = lambda: datetime.now(UTC)
    assert reconciler.elector.poll() is not None
    reconciler.tick()
    rng = np.random.default_rng(3)
    now = time.time()
    for k in range(PREFILL_S // 10):
        world.channel.append_samples(shadow(rollout_id, PREFILL_RATE * 10, now - PREFILL_S + 10 * k, rng))
        reconciler.tick()
    figures: dict[str, float] = {}
    if mode == "fixed":
        requests = PREFILL_S * PREFILL_RATE
        figures["cache_per_request"] = held(world, rollout_id, True) / requests
        figures["rows_per_request"] = held(world, rollout_id, False) / requests
    for _ in range(50):  # warm-up: the cache's re-read set (the last 60 s of windows) at its size
        world.channel.append_samples(shadow(rollout_id, per_tick, time.time(), rng))
        reconciler.tick()
    gc.collect()
    start = rss_bytes()
    for _ in range(ticks):
        world.channel.append_samples(shadow(rollout_id, per_tick, time.time(), rng))
        reconciler.tick()
    gc.collect()
    figures["rss_per_request"] = (rss_bytes() - start) / (ticks * per_tick)
    figures["rss_growth_mib"] = (rss_bytes() - start) / 2**20
    world.channel.close()
    world.engine.dispose()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ticks", type=int, default=1000)
    parser.add_argument("--per-tick", type=int, default=40)
    parser.add_argument("--child", choices=["default", "fixed"], help=argparse.SUPPRESS)
    parser.add_argument("--pg-url", help=argparse.SUPPRESS)
    parser.add_argument("--redis-prefix", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.ticks, args.per_tick, args.pg_url, args.redis_prefix)))
        return

    import psycopg

    services.ensure_postgres()
    services.ensure_redis()
    admin = services.pg_admin_url()
    results = {}
    for mode in ("default", "fixed"):
        name = f"modelroll_bench_{uuid.uuid4().hex[:10]}"
        prefix = f"modelroll-bench:{uuid.uuid4().hex[:10]}:"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            url = admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
            out = subprocess.run([sys.executable, __file__, "--child", mode, "--ticks", str(args.ticks),
                                  "--per-tick", str(args.per_tick), "--pg-url", url, "--redis-prefix", prefix],
                                 capture_output=True, text=True, timeout=3600, check=True)
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        finally:
            services.drop_redis_keys(REDIS_URL, prefix)
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    fixed, default = results["fixed"], results["default"]
    print(f"one rollout in its shadow step, {PREFILL_S} s of {PREFILL_RATE} req/s folded, then {args.ticks} ticks "
          f"of {args.per_tick} shadow requests each (both answers and labels)")
    print(f"  window cache:  {fixed['cache_per_request']:6.0f} B a request "
          f"(the rows' decoded JSON it held before: {fixed['rows_per_request']:.0f} B, "
          f"{fixed['rows_per_request'] / fixed['cache_per_request']:.1f}x)")
    print(f"  process RSS:   {default['rss_per_request']:6.0f} B a request with glibc's default mmap threshold "
          f"(+{default['rss_growth_mib']:.1f} MiB), {fixed['rss_per_request']:.0f} B with the fixed one "
          f"(+{fixed['rss_growth_mib']:.1f} MiB)")


if __name__ == "__main__":
    main()
