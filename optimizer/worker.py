"""The optimizer worker: claim optimization jobs from the live channel, run them, ack them.

A worker killed mid-job leaves its claim unacknowledged: the channel hands the job to another worker
after the visibility timeout, and after `job_max_attempts` deliveries puts it in the dead letters,
where the sweep marks its row failed with the last error. The attempt number fences every write, so
a slow earlier attempt can never overwrite a newer one. What no retry can change fails the job at once with
its reason: a bad request, a missing artifact, an artifact that fails its integrity check.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError

from modelroll.db import OptimizationJobRow
from modelroll.errors import InvalidInput, NotFound, Tampered, Unavailable
from modelroll.jobs import QUEUE, TERMINAL_STATES, requeue_orphans
from modelroll.live.base import Job, LiveChannel
from modelroll.settings import Settings
from optimizer.evaluate import Stopped
from optimizer.jobs import JobContext, JobFailed, Superseded, make_context, run_job

log = logging.getLogger(__name__)
SWEEP_INTERVAL_S = 10.0


@dataclass
class WorkerMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.jobs = Counter("modelroll_worker_jobs_total", "Job attempts by outcome", ["outcome"], registry=r)
        self.duration = Histogram("modelroll_worker_job_duration_seconds", "Wall time of one job attempt",
                                  buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 3600), registry=r)
        self.busy = Gauge("modelroll_worker_busy", "1 while a job runs", registry=r)
        self.last_poll = Gauge("modelroll_worker_last_poll_timestamp_seconds", "Last queue poll (unix time)",
                               registry=r)
        self.errors = Counter("modelroll_worker_errors_total", "Backend errors by kind", ["kind"], registry=r)
        self.dead = Gauge("modelroll_worker_dead_letters", "Jobs in the dead letters", registry=r)


def _job_id(job: Job) -> int | None:
    try:
        value = orjson.loads(job.payload)["job_id"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class Worker:
    """One consumer of the "optimize" queue; `run` loops until `stop` is set."""

    def __init__(self, ctx: JobContext, channel: LiveChannel, stop: threading.Event, *,
                 metrics: WorkerMetrics | None = None, poll_interval_s: float = 0.5,
                 consumer: str | None = None, on_idle: Callable[[], None] | None = None,
                 sweep_interval_s: float = SWEEP_INTERVAL_S) -> None:
        self.ctx, self.channel, self.stop = ctx, channel, stop
        self.metrics = metrics or WorkerMetrics()
        self.poll_interval_s = poll_interval_s
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.on_idle = on_idle
        self._dead_seen: set[str] = set()
        self._next_sweep = 0.0
        self.sweep_interval_s = sweep_interval_s

    @property
    def settings(self) -> Settings:
        return self.ctx.settings

    def run(self) -> None:
        log.info("worker started consumer=%s queue=%s", self.consumer, QUEUE)
        while not self.stop.is_set():
            try:
                self._sweep()
                job = self.channel.claim_job(QUEUE, self.consumer, self.settings.job_visibility_timeout_s,
                                             self.settings.job_max_attempts)
                self.metrics.last_poll.set(time.time())
            except (Unavailable, SQLAlchemyError) as exc:
                self.metrics.errors.labels(kind=type(exc).__name__).inc()
                log.warning("worker backend unavailable, retrying: %s", exc)
                self.stop.wait(min(5.0, self.poll_interval_s * 4))
                continue
            if job is None:
                if self.on_idle is not None:
                    self.on_idle()
                self.stop.wait(self.poll_interval_s)
                continue
            try:
                self.handle(job)
            except Exception as exc:  # a backend failing mid-job: the claim expires and the job is retried
                self.metrics.errors.labels(kind=type(exc).__name__).inc()
                log.exception("worker could not handle queue entry %s; it will be redelivered", job.id)
                self.stop.wait(min(5.0, self.poll_interval_s * 4))
        log.info("worker stopped consumer=%s", self.consumer)

    def _sweep(self) -> None:
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.sweep_interval_s
        with self.ctx.sessions() as session:
            for job_id in requeue_orphans(session, self.channel):
                log.warning("re-enqueued job %s whose submitter died before enqueuing it", job_id)
        dead = self.channel.dead_letters(QUEUE)
        self.metrics.dead.set(len(dead))
        for job in dead:
            if job.id not in self._dead_seen:
                self._bury(job)
                self._dead_seen.add(job.id)

    def _bury(self, job: Job) -> None:
        job_id = _job_id(job)
        if job_id is None:
            return
        with self.ctx.sessions() as session:
            row = session.get(OptimizationJobRow, job_id)
            if row is None or row.status in TERMINAL_STATES:
                return
            last = row.error or f"the worker died during attempt {job.attempts} (killed, out of memory or hung)"
            row.status, row.finished_at = "failed", datetime.now(UTC)
            row.error = f"dead-lettered after {job.attempts} attempt(s): {last}"
            row.message = "failed: retries exhausted"
            session.commit()
        log.error("job %s dead-lettered after %s attempts", job_id, job.attempts)

    def _mark(self, job_id: int, attempt: int, **values: Any) -> bool:
        with self.ctx.sessions() as session:
            done = session.execute(update(OptimizationJobRow).where(
                OptimizationJobRow.id == job_id, OptimizationJobRow.attempts == attempt).values(**values))
            session.commit()
            return bool(done.rowcount)  # type: ignore[attr-defined]

    def _start(self, job: Job, job_id: int) -> bool:
        """Fence: this delivery's attempt number becomes the row's, unless a newer one already started."""
        with self.ctx.sessions() as session:
            done = session.execute(update(OptimizationJobRow).where(
                OptimizationJobRow.id == job_id, OptimizationJobRow.attempts < job.attempts,
                OptimizationJobRow.status.not_in(TERMINAL_STATES),
            ).values(attempts=job.attempts, status="running", started_at=datetime.now(UTC), progress=0.0,
                     message=f"attempt {job.attempts} of {self.settings.job_max_attempts} on {self.consumer}"))
            session.commit()
            return bool(done.rowcount)  # type: ignore[attr-defined]

    def handle(self, job: Job) -> None:
        job_id = _job_id(job)
        if job_id is None:
            log.error("dropping queue entry %s: payload is not {\"job_id\": int}", job.id)
            self.channel.ack_job(job)
            self.metrics.jobs.labels(outcome="invalid").inc()
            return
        with self.ctx.sessions() as session:
            row = session.get(OptimizationJobRow, job_id)
            status = None if row is None else row.status
        if status is None or status in TERMINAL_STATES:
            log.info("acking job %s without running it: %s", job_id, "no such row" if status is None else status)
            self.channel.ack_job(job)
            return
        if not self._start(job, job_id):
            log.warning("job %s delivery %s is older than the row's attempt; leaving it", job_id, job.attempts)
            return
        self.metrics.busy.set(1)
        started = time.monotonic()
        with self._keep_claimed(job):
            outcome = self._attempt(job, job_id)
        self.metrics.busy.set(0)
        self.metrics.duration.observe(time.monotonic() - started)
        self.metrics.jobs.labels(outcome=outcome).inc()

    @contextlib.contextmanager
    def _keep_claimed(self, job: Job) -> Iterator[None]:
        """Extend the claim every third of the visibility timeout while the job runs: a job may outlast the
        timeout (an encoder's distillation alone can), and must not be handed to a second worker meanwhile."""
        done = threading.Event()
        period_s = self.settings.job_visibility_timeout_s / 3

        def beat() -> None:
            while not done.wait(period_s):
                try:
                    if not self.channel.extend_job(job, self.consumer):
                        log.warning("queue entry %s was taken over by another worker; the attempt fence keeps "
                                    "one result", job.id)
                        return
                except Unavailable as exc:
                    log.warning("could not extend the claim on queue entry %s: %s", job.id, exc)

        thread = threading.Thread(target=beat, name="modelroll-job-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join(timeout=5)

    def _attempt(self, job: Job, job_id: int) -> str:
        attempt, limit = job.attempts, self.settings.job_max_attempts
        try:
            run_job(self.ctx, job_id, attempt, self.stop)
        except Superseded:
            log.warning("job %s attempt %s superseded by a newer attempt", job_id, attempt)
            return "superseded"
        except Stopped:
            self._mark(job_id, attempt, status="retrying", message=f"worker stopped during attempt {attempt}; "
                       "another worker takes it over after the visibility timeout")
            return "stopped"
        except (JobFailed, InvalidInput, NotFound, Tampered) as exc:  # no retry can help: failed at once
            self._mark(job_id, attempt, status="failed", error=str(exc), message="failed",
                       finished_at=datetime.now(UTC))
            self.channel.ack_job(job)
            log.error("job %s failed: %s", job_id, exc)
            return "failed"
        except Exception as exc:  # unexpected: retried on redelivery, dead-lettered after the limit
            log.exception("job %s attempt %s of %s crashed", job_id, attempt, limit)
            error = f"{type(exc).__name__}: {exc}"
            last = attempt >= limit
            self._mark(job_id, attempt, status="failed" if last else "retrying", error=error,
                       message="failed: retries exhausted" if last else f"attempt {attempt} crashed; will retry",
                       **({"finished_at": datetime.now(UTC)} if last else {}))
            return "crashed"
        self.channel.ack_job(job)
        return "succeeded"


def run_worker(settings: Settings, channel: LiveChannel, stop_event: threading.Event, *,
               ctx: JobContext | None = None, serve_metrics: bool = True, poll_interval_s: float = 0.5,
               on_idle: Callable[[], None] | None = None) -> None:
    """Run one worker until `stop_event` is set (in-process for embedded mode, or as `modelroll worker`)."""
    ctx = ctx or make_context(settings)
    metrics = WorkerMetrics()
    server = None
    if serve_metrics and settings.worker_port:
        server, _ = start_http_server(settings.worker_port, addr=settings.worker_host, registry=metrics.registry)
        log.info("worker metrics on http://%s:%s/metrics", settings.worker_host, settings.worker_port)
    try:
        Worker(ctx, channel, stop_event, metrics=metrics, poll_interval_s=poll_interval_s, on_idle=on_idle).run()
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
