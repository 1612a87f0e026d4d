"""The distributed mode end to end, as real processes on loopback: 2 routers, 2 controllers, 1 worker, PostgreSQL and
a Redis of the test's own. Load runs throughout; the worker builds the candidate, a rollout reaches promotion while
the leader is SIGKILLed and Redis is stopped and restarted empty under load. Prints the measured figures."""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import redis
from sqlalchemy import select

from modelroll import migrate
from modelroll.artifacts import ArtifactStore
from modelroll.db import RolloutEventRow, make_engine, make_session_factory
from modelroll.settings import Settings
from tests.e2e.processes import Controller, Router, Worker, metric, stop_all, wait_for
from tests.loopback import RedisServer

pytestmark = pytest.mark.timeout(300)

LEASE_S = 2.0
ADMIN = "e2e-admin-secret"
PREFIX = "modelroll:"
TECHNIQUE = "prune:0.2,int8"  # INT8 alone saves too little runner memory live (0.41x measured)
RATE_PER_S = 120.0  # total client requests per second over both routers
OUTAGE_S = 4.0
LABEL_DELAY_S = 1.0  # labels come after the answer, as they do in life
STEPS = [  # per-rollout settings (allowed): short steps; the default gates stay as they are
    {"weight_pct": 0, "shadow": True, "min_duration_s": 2, "min_samples": 150},
    {"weight_pct": 50, "min_duration_s": 4, "min_samples": 100},
    {"weight_pct": 100, "min_duration_s": 5, "min_samples": 100},  # cannot promote before the outage starts
]


@pytest.fixture(scope="session")
def worker_home() -> Path:
    """The worker's home: its cache holds the trained digits model, kept across sessions (keyed by its recipe)."""
    from optimizer.sources import digits_model

    base = os.environ.get("MODELROLL_TEST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "modelroll-test")
    home = Path(base) / "e2e-worker-home"
    digits_model(home / "cache")  # trains once (~5 s on an idle core), loads after
    return home


@dataclass
class Sent:
    at: float  # monotonic
    number: int  # request id load-<number>
    router: int
    status: int
    variant: str
    error: str = ""


@dataclass
class Load:
    """Client threads sending V2 infer requests (routing keys, both routers in turn) and, a second later, their
    labels as feedback to the other router; labels refused (503 while Redis is away) are sent again later."""

    routers: list[str]
    threads: int = 4
    max_requests: int = 40_000
    max_s: float = 240.0
    sent: list[Sent] = field(default_factory=list)
    feedback: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("joined", "unknown", "invalid", "refused_tries", "never_sent"), 0))
    unknown: list[int] = field(default_factory=list)  # requests whose label found no prediction
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _ids: Iterator[int] = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        from optimizer.sources import digits_eval_set

        x, y = digits_eval_set()
        bodies = [orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                                            "data": row.tolist()}]}) for row in x]
        self._workers = [threading.Thread(target=self._run, args=(i, bodies, y), daemon=True)
                         for i in range(self.threads)]
        for t in self._workers:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(20)

    def _run(self, index: int, bodies: list[bytes], labels: np.ndarray) -> None:
        rng = np.random.default_rng(index)
        pace_s = self.threads / RATE_PER_S
        due: deque[tuple[float, dict[str, Any]]] = deque()  # (answered at, label item)
        batch: list[dict[str, Any]] = []
        retry_at = 0.0
        ends = time.monotonic() + self.max_s
        with httpx.Client(timeout=10) as http:
            while not self._stop.is_set() and time.monotonic() < ends:
                n = next(self._ids)
                if n >= self.max_requests:
                    break
                started = time.monotonic()
                router = n % len(self.routers)
                row = int(rng.integers(len(bodies)))
                try:
                    r = http.post(f"{self.routers[router]}/v2/models/digits/infer", content=bodies[row],
                                  headers={"x-modelroll-key": f"user-{rng.integers(10_000)}",
                                           "x-request-id": f"load-{n}", "content-type": "application/json"})
                    self.sent.append(Sent(started, n, router, r.status_code, r.headers.get("x-modelroll-variant", ""),
                                          "" if r.status_code == 200 else r.text[:200]))
                    if r.status_code == 200:
                        due.append((started, {"request_id": f"load-{n}", "label": int(labels[row])}))
                except httpx.HTTPError as exc:
                    self.sent.append(Sent(started, n, router, 0, "", repr(exc)[:200]))
                while due and due[0][0] < started - LABEL_DELAY_S:
                    batch.append(due.popleft()[1])
                if len(batch) >= 10 and started >= retry_at:
                    if self._send_labels(http, self.routers[(router + 1) % len(self.routers)], batch):
                        batch = []
                    else:
                        retry_at = started + 0.5
                self._stop.wait(max(0.0, pace_s - (time.monotonic() - started)))
        with self._lock:
            self.feedback["never_sent"] += len(batch) + len(due)

    def _send_labels(self, http: httpx.Client, router: str, items: list[dict[str, Any]]) -> bool:
        try:
            r = http.post(f"{router}/v1/feedback", content=orjson.dumps(items))
        except httpx.HTTPError:
            r = None
        with self._lock:
            if r is None or r.status_code != 200:
                self.feedback["refused_tries"] += len(items)
                return False
            answer = r.json()
            for status in ("joined", "unknown", "invalid"):
                self.feedback[status] += int(answer[status])
            self.unknown += [int(x["request_id"].removeprefix("load-")) for x in answer["results"]
                             if x["status"] == "unknown"]
        return True

    def served(self, since: float, until: float) -> list[Sent]:
        return [s for s in list(self.sent) if since <= s.at < until]


@dataclass
class Cluster:
    redis: RedisServer
    env: dict[str, str]
    settings: Settings
    routers: list[Router]
    controllers: list[Controller]
    worker: Worker

    def api(self, method: str, path: str, **kw: Any) -> Any:
        """Call the ops API on whichever controller answers (one may have been killed)."""
        for c in self.controllers:
            if c.proc.poll() is None:
                r = httpx.request(method, f"{c.url}{path}", headers={"Authorization": f"Bearer {ADMIN}"},
                                  timeout=10, **kw)
                assert r.status_code < 400, r.text
                return r.json()
        raise AssertionError("no controller is running")

    def leader(self) -> Controller | None:
        leading = [c for c in self.controllers if c.proc.poll() is None and c.leading()]
        assert len(leading) <= 1, "two controllers lead at once"
        return leading[0] if leading else None


@pytest.fixture()
def cluster(tmp_path: Path, pg_url: str, worker_home: Path) -> Iterator[Cluster]:
    from optimizer.baselines import register_builtin

    started = time.monotonic()
    own_redis = RedisServer(tmp_path)
    own_redis.start()
    env = {**os.environ, "MODELROLL_DATABASE_URL": pg_url, "MODELROLL_REDIS_URL": own_redis.url,
           "MODELROLL_REDIS_PREFIX": PREFIX, "MODELROLL_HOME": str(tmp_path / "home"),
           "MODELROLL_ARTIFACTS_DIR": str(tmp_path / "artifacts"), "MODELROLL_ADMIN_TOKEN": ADMIN,
           "MODELROLL_LEADER_LEASE_S": str(LEASE_S), "MODELROLL_RECONCILE_INTERVAL_S": "0.2",
           "MODELROLL_REDIS_TIMEOUT_S": "0.5", "MODELROLL_ROUTER_FLUSH_INTERVAL_S": "0.05",
           "MODELROLL_ROUTER_MEMORY_INTERVAL_S": "0.5", "MODELROLL_EVAL_MAX_TIME_S": "0.3",
           "MODELROLL_EVAL_MIN_RUNS": "20", "MODELROLL_LOG_LEVEL": "INFO"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    settings = Settings(database_url=pg_url, artifacts_dir=tmp_path / "artifacts", home=tmp_path / "home")
    migrate.upgrade(settings)
    worker = Worker({**env, "MODELROLL_HOME": str(worker_home)}, tmp_path / "worker.log")
    controllers = [Controller(env, tmp_path / f"controller-{i}.log") for i in range(2)]
    routers: list[Router] = []
    cluster = Cluster(own_redis, env, settings, routers, controllers, worker)
    try:
        # Registered while the others boot; routers read the catalog's models when they start.
        engine = make_engine(settings)
        with make_session_factory(engine)() as session, session.begin():
            register_builtin(session, ArtifactStore.from_settings(settings), "digits", worker_home / "cache")
        engine.dispose()
        routers += [Router(env, tmp_path / f"router-{i}.log") for i in range(2)]
        for p in [worker, *controllers]:  # the routers go on booting while the worker builds the candidate
            wait_for(f"{p.log_path.stem} to be ready", p.ready, 120, 0.1)
        print(f"\nworker and controllers ready in {time.monotonic() - started:.1f} s")
        yield cluster
    finally:
        stop_all([*routers, *controllers, worker])
        own_redis.stop()


def api_until(cluster: Cluster, path: str, key: str, ends: tuple[str, ...], timeout_s: float) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        body: dict[str, Any] = cluster.api("GET", path)
        return body if body[key] in ends else None
    return wait_for(f"{path} to reach {key} in {ends}", check, timeout_s, 0.2)  # type: ignore[no-any-return]


def split_at(router: Router) -> dict[str, float]:
    return dict(router.readiness()["models"]["digits"]["weights"])


def both_routers_show(cluster: Cluster, weights: dict[str, float], timeout_s: float = 60.0,
                      rollout_id: int | None = None) -> float:
    """Wait until both routers serve `weights`; returns the wall-clock time the second one was seen doing so."""
    def check() -> float | None:
        seen = [{k: v for k, v in split_at(r).items() if v} == weights for r in cluster.routers]
        return time.time() if all(seen) else None
    try:
        return float(wait_for(f"both routers at {weights}", check, timeout_s, 0.01))
    except AssertionError as exc:
        if rollout_id is None:
            raise
        r = cluster.api("GET", f"/v1/rollouts/{rollout_id}")
        raise AssertionError(f"{exc}; rollout {r['phase']} at step {r['step_index']}: "
                             f"{[x['message'] for x in r['results']]}") from None


def event_time(cluster: Cluster, rollout_id: int, kind: str, step_index: int) -> float:
    events = cluster.api("GET", f"/v1/rollouts/{rollout_id}/events")["events"]
    found = [e for e in events if e["kind"] == kind and e["step_index"] == step_index]
    assert found, f"no {kind} event at step {step_index}: {events}"
    return datetime.fromisoformat(found[0]["ts"]).timestamp()


def stop_counting_backlog(server: RedisServer) -> int:
    """Stop Redis (SIGTERM) and return how many samples it held that no controller had folded yet.

    Writes are paused first, so the count read is exactly what the stop throws away.
    """
    client = redis.Redis.from_url(server.url, socket_timeout=2)
    client.client_pause(10_000, all=False)  # writes wait (and die with the server); reads answer
    group = next(g for g in client.xinfo_groups(PREFIX + "samples") if g["name"] == b"controller")
    undelivered = client.xrange(PREFIX + "samples", min=b"(" + group["last-delivered-id"], max="+")
    client.close()
    server.stop()
    return len(undelivered or []) + int(group["pending"])


def first_times(checks: dict[str, Callable[[], Any]], timeout_s: float) -> dict[str, float]:
    """Poll every check until each has held once; returns the monotonic time each one first held."""
    seen: dict[str, float] = {}

    def poll() -> bool:
        for name, check in checks.items():
            if name not in seen:
                try:
                    held = check()
                except (httpx.HTTPError, redis.RedisError):
                    held = False
                if held:
                    seen[name] = time.monotonic()
        return len(seen) == len(checks)

    wait_for(f"all of {sorted(checks)}", poll, timeout_s, 0.02)
    return seen


def test_rollout_survives_leader_kill_and_redis_restart_under_load(cluster: Cluster) -> None:
    figures: dict[str, Any] = {}
    t0 = time.monotonic()
    # The worker builds and measures the candidate from the built-in digits model (torch source + eval set).
    job = cluster.api("POST", "/v1/optimizations", json={"model": "digits", "techniques": [TECHNIQUE],
                                                        "batch_sizes": [1]})
    for r in cluster.routers:
        wait_for(f"{r.log_path.stem} to be ready", r.ready, 120, 0.1)
    done = api_until(cluster, f"/v1/optimizations/{job['id']}", "status", ("succeeded", "failed"), 120)
    assert done["status"] == "succeeded", done
    report = done["reports"][0]
    assert report["passed"], report["gates"]
    candidate = report["variant"]
    figures["job_s"] = time.monotonic() - t0

    load = Load([r.url for r in cluster.routers])
    load.start()
    try:
        created_at = time.monotonic()
        rid = cluster.api("POST", "/v1/rollouts", json={"model": "digits", "baseline": "baseline",
                                                       "candidate": candidate, "steps": STEPS})["id"]

        # 1. The split change reaches both routers: their split, their answers and their metrics.
        seen_at = both_routers_show(cluster, {"baseline": 50.0, candidate: 50.0}, 90, rid)
        figures["shadow_step_s"] = time.monotonic() - created_at
        figures["propagation_50_ms"] = (seen_at - event_time(cluster, rid, "advanced", 1)) * 1000
        since = time.monotonic()
        wait_for("both routers to answer with the candidate", lambda: {
            s.router for s in load.served(since, float("inf")) if s.variant == candidate} == {0, 1}, 10)
        for r in cluster.routers:
            assert metric(r.metrics(), "modelroll_variant_weight_pct", model="digits", variant=candidate) == 50.0

        # 2. SIGKILL the leader mid-rollout; the standby takes over within about one lease.
        leader = wait_for("a leader", cluster.leader, 10)
        standby = next(c for c in cluster.controllers if c is not leader)
        leader.kill()
        killed_at = time.monotonic()
        wait_for("the standby to lead", lambda: standby.leader_metric() == 1.0, LEASE_S * 5, 0.02)
        figures["new_leader_s"] = time.monotonic() - killed_at
        assert figures["new_leader_s"] <= LEASE_S + 1.5
        seen_at = both_routers_show(cluster, {candidate: 100.0}, 60)
        figures["propagation_100_ms"] = (seen_at - event_time(cluster, rid, "advanced", 2)) * 1000

        # 3. Redis stops under load: routers keep serving the last split and count what they cannot send.
        lost_in_redis = stop_counting_backlog(cluster.redis)
        down_at = time.monotonic()
        wait_for("both routers degraded with unsent samples counted", lambda: all(
            (lambda ready: ready["live_channel"] == "degraded" and ready["samples"]["unsent"] > 0)(r.readiness())
            for r in cluster.routers), OUTAGE_S, 0.1)
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))  # the load goes on through the outage
        cluster.redis.start()  # empty: no persistence, the split hash and the leader lock are gone
        up_at = time.monotonic()
        during = load.served(down_at, up_at)
        assert during and all(s.status == 200 for s in during), [s for s in during if s.status != 200][:5]
        assert {s.variant for s in during} == {candidate}  # the last split (100 %), kept in memory
        unsent_in_outage = [r.readiness()["samples"]["unsent"] for r in cluster.routers]

        live = redis.Redis.from_url(cluster.redis.url, socket_timeout=2)
        recovered = first_times({
            "routers_ok": lambda: all(r.readiness()["live_channel"] == "ok" for r in cluster.routers),
            "routers_flushed": lambda: all(r.readiness()["samples"]["pending"] == 0 for r in cluster.routers),
            "leader": lambda: cluster.leader() is not None,
            "split_republished": lambda: live.hget(PREFIX + "splits", "digits"),
        }, 30)
        live.close()
        figures.update({f"{name}_after_s": at - up_at for name, at in recovered.items()})
        final = api_until(cluster, f"/v1/rollouts/{rid}", "phase", ("promoted", "rolled_back"), 60)
        assert final["phase"] == "promoted", final["reason"]
        both_routers_show(cluster, {candidate: 100.0}, 30)
        figures["total_s"] = time.monotonic() - t0
    finally:
        load.stop()

    readiness = [r.readiness()["samples"] for r in cluster.routers]
    failed = [s for s in load.sent if s.status != 200]
    assert not failed, failed[:5]
    assert all(s["dropped"] == 0 for s in readiness), readiness
    unsent_metric = sum(metric(r.metrics(), "modelroll_samples_unsent_total") or 0 for r in cluster.routers)
    assert unsent_metric == sum(s["unsent"] for s in readiness) >= sum(unsent_in_outage) > 0

    engine = make_engine(cluster.settings)
    with make_session_factory(engine)() as session:
        events = session.scalars(select(RolloutEventRow).where(RolloutEventRow.rollout_id == rid)
                                 .order_by(RolloutEventRow.seq)).all()
    engine.dispose()
    kinds = [(e.kind, e.step_index) for e in events]
    assert kinds == [("created", 0), ("started", 0), ("advanced", 1), ("advanced", 2), ("promoted", 2)], kinds
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    # started and the first advance by the first leader; the next advance by the standby that took over after the
    # SIGKILL; promotion by whoever was elected after Redis came back empty: each new leader a larger token.
    tokens = [e.fencing_token or 0 for e in events[1:]]
    assert tokens[0] == tokens[1] < tokens[2] < tokens[3], tokens

    # A label finds no prediction when its record died with Redis (answered shortly before the stop) or when it
    # came before the router re-sent the record it kept through the outage (answered during it).
    answered = {s.number: s.at for s in load.sent}
    unknown_when = [answered[n] for n in load.unknown]
    figures["labels_unknown"] = {"earlier": sum(t < down_at - 2 for t in unknown_when),
                                 "last_2s_before": sum(down_at - 2 <= t < down_at for t in unknown_when),
                                 "during": sum(down_at <= t < up_at for t in unknown_when),
                                 "after": sum(t >= up_at for t in unknown_when)}
    figures.update(requests=len(load.sent), outage_requests=len(during), lost_in_redis=lost_in_redis,
                   unsent=[s["unsent"] for s in readiness], dropped=[s["dropped"] for s in readiness],
                   labels=load.feedback, tokens=tokens)
    print("\ndistributed e2e figures: " + ", ".join(
        f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()))


def test_a_leader_elected_after_redis_lost_its_data_outranks_every_earlier_leader(tmp_path: Path,
                                                                                   pg_url: str) -> None:
    """A Redis restarted empty counts lock tokens from 1 again: the next leader must still get a larger token."""
    from controller.fencing import StaleLeader, fenced
    from controller.reconcile import Reconciler
    from modelroll.live import open_channel

    own_redis = RedisServer(tmp_path)
    own_redis.start()
    settings = Settings(database_url=pg_url, redis_url=own_redis.url, redis_timeout_s=0.5, leader_lease_s=5)
    migrate.upgrade(settings)
    engine = make_engine(settings)
    sessions = make_session_factory(engine)
    channel = open_channel(settings)
    try:
        a, b = (Reconciler(settings, channel, sessions, holder=holder) for holder in ("a", "b"))
        first = a.elector.poll()
        a.elector.step_down()
        second = b.elector.poll()
        assert first is not None and second is not None and second > first
        own_redis.stop()
        own_redis.start()  # no persistence: the lock and its token counter are gone
        third = wait_for("a leader on the emptied Redis", a.elector.poll, 10)
        assert third > second
        with pytest.raises(StaleLeader), fenced(sessions, second) as session:
            session.execute(select(1))
        with fenced(sessions, third) as session:
            session.execute(select(1))
    finally:
        channel.close()
        engine.dispose()
        own_redis.stop()
