"""A bounded soak of real processes: `modelroll controller` and `modelroll router` on PostgreSQL + Redis, one rollout
held in its shadow step (it passes but must stay a long time), paced V2 load on loopback with every answer's label
sent back through /v1/feedback, and each process's resident memory (/proc/<pid>/status VmRSS) sampled throughout.

The baseline is a deliberately slow, large model and the candidate the small digits MLP, so no criterion can fail
and end the rollout (which would empty the controller's window cache and hide any growth). Optionally, shadow
requests' samples are also appended straight to the live channel: the controller then folds and evaluates many
more requests per second than the router alone can serve here, which sharpens what a short run can prove.
"""

from __future__ import annotations

import itertools
import os
import statistics
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
from sqlalchemy import select

from modelroll import catalog, migrate
from modelroll.artifacts import ArtifactStore
from modelroll.db import RolloutRow, make_engine, make_session_factory
from modelroll.live import open_channel
from modelroll.live.base import Sample
from modelroll.settings import Settings
from tests.e2e.processes import Controller, Process, Router, stop_all, wait_for
from tests.router_models import build_digits, build_slow, digits_data

ADMIN = "soak-admin-secret"
MODEL = "digits"
BASELINE = "baseline"
CANDIDATE = "small"
LABEL_DELAY_S = 1.0  # labels come after the answer, as they do in life
SAMPLE_EVERY_S = 0.5
STEADY_S = 5.0  # RSS at warm-up and at the end: the median of the samples over this long


@dataclass(frozen=True)
class Plan:
    warmup_s: float  # load runs this long before the first figure is taken
    measure_s: float  # then this long
    rate_per_s: float  # client requests per second through the router
    injected_per_s: float = 0.0  # shadow requests per second whose samples go straight into the live channel
    clients: int = 2
    reconcile_interval_s: float = 1.0

    @property
    def max_requests(self) -> int:  # every load loop is bounded in count as well as in time
        return int(self.rate_per_s * (self.warmup_s + self.measure_s) * 1.2) + 100


@dataclass
class Figures:
    """RSS at the end of the warm-up and at the end of the run, per process, with the requests in between."""

    plan: Plan
    rss: dict[str, list[tuple[float, int]]] = field(default_factory=dict)  # name -> (seconds since load, bytes)
    sent: int = 0  # client requests answered 200
    failed: list[str] = field(default_factory=list)
    labels_joined: int = 0
    labels_sent: int = 0
    injected: int = 0
    folded: int = 0  # samples the controller folded while measured (answers, labels, memory readings)
    looks: int = 0  # times the controller evaluated the rollout while measured (reconcile ticks)
    phase: str = ""

    def at(self, name: str, start: float, end: float) -> float:
        values = [v for t, v in self.rss[name] if start <= t <= end]
        assert values, f"no {name} RSS sample between {start:.0f} s and {end:.0f} s"
        return float(statistics.median(values))

    def warm(self, name: str) -> float:
        return self.at(name, self.plan.warmup_s, self.plan.warmup_s + STEADY_S)

    def end(self, name: str) -> float:
        last = self.plan.warmup_s + self.plan.measure_s
        return self.at(name, last - STEADY_S, last)

    def growth(self, name: str) -> float:
        return self.end(name) / self.warm(name) - 1.0

    def table(self) -> str:
        rows = [f"{name}: {self.warm(name) / 2**20:.1f} MiB after warm-up → {self.end(name) / 2**20:.1f} MiB at the "
                f"end ({self.growth(name):+.2%})" for name in self.rss]
        return "\n".join([
            f"soak: {self.plan.warmup_s:.0f} s warm-up + {self.plan.measure_s:.0f} s measured, "
            f"{self.plan.rate_per_s:.0f} req/s through the router ({self.sent} answered, {len(self.failed)} failed, "
            f"{self.labels_joined} of {self.labels_sent} labels joined)"
            + (f", {self.plan.injected_per_s:.0f} shadow req/s injected ({self.injected})" if self.injected else ""),
            *rows, "controller RSS every 30 s from the end of the warm-up (MiB): " + " ".join(
                f"{self.at('controller', t, t + SAMPLE_EVERY_S * 2) / 2**20:.1f}"
                for t in np.arange(self.plan.warmup_s, self.plan.warmup_s + self.plan.measure_s + 1, 30.0)),
            f"while measured the controller folded {self.folded} samples and evaluated the rollout {self.looks} "
                   f"times; its phase at the end: {self.phase}"])


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"process {pid} reports no VmRSS")


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            continue  # a thread that ended meanwhile
    return found


def seed_catalog(settings: Settings, models: Path) -> None:
    """digits: a slow 2048-wide baseline (16 MiB of weights, random answers) and the trained digits MLP."""
    small = build_digits(models / "digits")["baseline"]
    slow = build_slow(models / "slow2048.onnx", width=2048, layers=2)
    migrate.upgrade(settings)
    engine = make_engine(settings)
    try:
        store = ArtifactStore.from_settings(settings)
        with make_session_factory(engine)() as session, session.begin():
            catalog.register_model(session, store, slow, MODEL)
            catalog.add_variant(session, store, MODEL, CANDIDATE, small)
    finally:
        engine.dispose()


class Load:
    """Client threads sending single-row V2 requests at a fixed pace, each answer's label posted a second later."""

    def __init__(self, router_url: str, plan: Plan, figures: Figures) -> None:
        x, y = digits_data()
        self.bodies = [orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                                                 "data": row.tolist()}]}) for row in x]
        self.labels = y
        self.url = router_url
        self.plan = plan
        self.figures = figures
        self.stop = threading.Event()
        self._numbers = itertools.count()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True, name=f"soak-{i}")
                         for i in range(plan.clients)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def join(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(30)

    def _client(self, index: int) -> None:
        rng = np.random.default_rng(index)
        pace_s = self.plan.clients / self.plan.rate_per_s
        due: deque[tuple[float, dict[str, Any]]] = deque()
        ends = time.monotonic() + self.plan.warmup_s + self.plan.measure_s + 5
        with httpx.Client(timeout=10) as http:
            while not self.stop.is_set() and time.monotonic() < ends:
                if next(self._numbers) >= self.plan.max_requests:
                    break
                started = time.monotonic()
                row = int(rng.integers(len(self.bodies)))
                request_id = uuid.uuid4().hex
                try:
                    r = http.post(f"{self.url}/v2/models/{MODEL}/infer", content=self.bodies[row], headers={
                        "content-type": "application/json", "x-request-id": request_id,
                        "x-modelroll-key": f"user-{rng.integers(1000)}"})
                    ok = r.status_code == 200
                    why = "" if ok else f"{r.status_code} {r.text[:200]}"
                except httpx.HTTPError as exc:
                    ok, why = False, repr(exc)[:200]
                with self._lock:
                    if ok:
                        self.figures.sent += 1
                        due.append((started, {"request_id": request_id, "label": int(self.labels[row])}))
                    else:
                        self.figures.failed.append(why)
                batch: list[dict[str, Any]] = []
                while due and due[0][0] < started - LABEL_DELAY_S and len(batch) < 100:
                    batch.append(due.popleft()[1])
                if batch:
                    self._feedback(http, batch)
                self.stop.wait(max(0.0, pace_s - (time.monotonic() - started)))

    def _feedback(self, http: httpx.Client, batch: list[dict[str, Any]]) -> None:
        try:
            r = http.post(f"{self.url}/v1/feedback", content=orjson.dumps(batch))
        except httpx.HTTPError as exc:
            with self._lock:
                self.figures.failed.append(f"feedback: {exc!r}"[:200])
            return
        with self._lock:
            self.figures.labels_sent += len(batch)
            if r.status_code == 200:
                self.figures.labels_joined += int(r.json()["joined"])
            else:
                self.figures.failed.append(f"feedback {r.status_code} {r.text[:200]}")


def shadow_samples(rollout_id: int, n: int, rng: np.random.Generator) -> list[Sample]:
    """n shadow requests as the router records them: both arms' request samples and both labels, one id each;
    figures alike to what the real variants show (the candidate far faster, both arms labelled)."""
    now = time.time()
    out: list[Sample] = []
    for _ in range(n):
        request_id = uuid.uuid4().hex
        for variant, latency_ms, right, shadow in ((BASELINE, rng.uniform(2.0, 4.0), rng.random() < 0.1, False),
                                                   (CANDIDATE, rng.uniform(0.05, 0.2), rng.random() < 0.95, True)):
            common = {"model": MODEL, "variant": variant, "ts": now, "rollout_id": rollout_id, "step": 0,
                      "request_id": request_id, "shadow": shadow}
            out.append(Sample(kind="request", latency_ms=float(latency_ms), total_ms=float(latency_ms) + 0.5,
                              status="ok", **common))  # type: ignore[arg-type]
            out.append(Sample(kind="feedback", correct=bool(right), **common))  # type: ignore[arg-type]
    return out


def looks(settings: Settings, rollout_id: int) -> int:
    """Times the controller has evaluated the rollout (its evaluation record counts them)."""
    engine = make_engine(settings)
    try:
        with make_session_factory(engine)() as session:
            evaluation = session.scalar(select(RolloutRow.evaluation).where(RolloutRow.id == rollout_id))
    finally:
        engine.dispose()
    return int((evaluation or {}).get("looks", 0))


def folded(controller: Controller) -> float:
    """Samples the controller has folded (its `modelroll_controller_events_total{name="samples_folded"}`)."""
    for line in httpx.get(f"{controller.url}/metrics", timeout=5).text.splitlines():
        if line.startswith('modelroll_controller_events_total{name="samples_folded"}'):
            return float(line.rpartition(" ")[2])
    return 0.0


def run(plan: Plan, env: Mapping[str, str], workdir: Path, models: Path) -> Figures:
    """Seed the catalog, start both processes, roll the candidate out, load them for the plan's time; stop all."""
    settings = Settings(database_url=env["MODELROLL_DATABASE_URL"], artifacts_dir=Path(env["MODELROLL_ARTIFACTS_DIR"]),
                        home=Path(env["MODELROLL_HOME"]))
    seed_catalog(settings, models)
    figures = Figures(plan)
    env = {**env, "MODELROLL_RECONCILE_INTERVAL_S": str(plan.reconcile_interval_s)}
    controller = Controller(env, workdir / "controller.log")
    router = Router(env, workdir / "router.log")
    processes: list[Process] = [router, controller]
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        for p in processes:
            wait_for(f"{p.log_path.stem} to be ready", p.ready, 120, 0.1)
        admin = {"Authorization": f"Bearer {ADMIN}"}
        created = httpx.post(f"{controller.url}/v1/rollouts", headers=admin, timeout=10, json={
            "model": MODEL, "baseline": BASELINE, "candidate": CANDIDATE, "force": True,  # no optimizer report
            "steps": [{"weight_pct": 0, "shadow": True, "min_duration_s": 36_000, "min_samples": 100},
                      {"weight_pct": 100, "min_duration_s": 36_000, "min_samples": 100}]})
        assert created.status_code == 201, created.text
        rollout_id = int(created.json()["id"])
        wait_for("the router to mirror to the candidate", lambda: (lambda m: m["ready"] and m["shadow"] == CANDIDATE)(
            router.readiness()["models"][MODEL]), 60, 0.1)

        load = Load(router.url, plan, figures)
        watched = {"controller": controller.proc.pid, "router": router.proc.pid}
        started = time.monotonic()
        total_s = plan.warmup_s + plan.measure_s

        def sample_memory() -> None:
            while not stop.is_set() and (t := time.monotonic() - started) <= total_s + SAMPLE_EVERY_S:
                for name, pid in watched.items():
                    figures.rss.setdefault(name, []).append((t, rss_bytes(pid)))
                runners = children(router.proc.pid)
                figures.rss.setdefault("router runners", []).append((t, sum(rss_bytes(p) for p in runners)))
                stop.wait(SAMPLE_EVERY_S)

        def inject() -> None:
            channel = open_channel(Settings(redis_url=env["MODELROLL_REDIS_URL"],
                                            redis_prefix=env["MODELROLL_REDIS_PREFIX"]))
            rng = np.random.default_rng(11)
            every_s, budget = 0.25, int(plan.injected_per_s * (total_s + 5))
            try:
                while not stop.is_set() and time.monotonic() - started < total_s and figures.injected < budget:
                    tick = time.monotonic()
                    n = int(plan.injected_per_s * every_s)
                    channel.append_samples(shadow_samples(rollout_id, n, rng))
                    figures.injected += n
                    stop.wait(max(0.0, every_s - (time.monotonic() - tick)))
            finally:
                channel.close()

        threads = [threading.Thread(target=sample_memory, daemon=True, name="soak-rss")]
        if plan.injected_per_s:
            threads.append(threading.Thread(target=inject, daemon=True, name="soak-inject"))
        load.start()
        for t in threads:
            t.start()
        stop.wait(plan.warmup_s)
        folded_at_warm, looks_at_warm = folded(controller), looks(settings, rollout_id)
        stop.wait(max(0.0, started + total_s + SAMPLE_EVERY_S - time.monotonic()))
        load.join()
        stop.set()
        for t in threads:
            t.join(30)
        figures.folded = int(folded(controller) - folded_at_warm)
        figures.looks = looks(settings, rollout_id) - looks_at_warm
        state = httpx.get(f"{controller.url}/v1/rollouts/{rollout_id}", headers=admin, timeout=10).json()
        figures.phase = str(state["phase"])
        return figures
    finally:
        stop.set()
        stop_all(processes)


def environment(pg_url: str, redis_url: str, redis_prefix: str, workdir: Path) -> dict[str, str]:
    env = {**os.environ, "MODELROLL_DATABASE_URL": pg_url, "MODELROLL_REDIS_URL": redis_url,
           "MODELROLL_REDIS_PREFIX": redis_prefix, "MODELROLL_HOME": str(workdir / "home"),
           "MODELROLL_ARTIFACTS_DIR": str(workdir / "artifacts"), "MODELROLL_ADMIN_TOKEN": ADMIN,
           "MODELROLL_LOG_LEVEL": "INFO"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env
