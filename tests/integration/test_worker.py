"""The optimizer worker on PostgreSQL + Redis: a worker killed mid-evaluation is replaced, retries end in
the dead letters, a failing candidate never fails its job, and the worker stops on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import orjson
import pytest
from onnx import TensorProto, helper, numpy_helper
from sqlalchemy import select

from modelroll.catalog import register_model
from modelroll.db import CandidateReportRow, OptimizationJobRow, VariantRow
from modelroll.inputs import LOCAL
from modelroll.jobs import QUEUE, OptimizationRequest, submit_job
from modelroll.live import LiveChannel, open_channel
from modelroll.migrate import ensure_schema
from modelroll.settings import Settings
from optimizer.jobs import JobContext, make_context
from optimizer.worker import Worker
from tests.loopback import free_port, wait_for

MODELROLL = str(Path(sys.executable).parent / "modelroll")


def tiny_mlp(path: Path, hidden: int = 512) -> None:
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["logits"])],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(rng.normal(0, 0.1, (64, hidden)).astype(np.float32), "w1"),
         numpy_helper.from_array(rng.normal(0, 0.1, (hidden, 10)).astype(np.float32), "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))


@dataclass
class Stack:
    settings: Settings
    ctx: JobContext
    channel: LiveChannel
    eval_path: Path
    env: dict[str, str]

    def submit(self, *techniques: str) -> int:
        request = OptimizationRequest(model="tiny", techniques=techniques, eval_data=str(self.eval_path),
                                      batch_sizes=(1,))
        with self.ctx.sessions() as session:
            return submit_job(session, self.channel, request, self.settings.effective_artifacts_dir, LOCAL).id

    def job(self, job_id: int) -> OptimizationJobRow:
        with self.ctx.sessions() as session:
            row = session.get(OptimizationJobRow, job_id)
            assert row is not None
            return row


@pytest.fixture()
def stack(tmp_path: Path, pg_url: str, redis_url: str, redis_prefix: str) -> Iterator[Stack]:
    settings = Settings(home=tmp_path / "home", database_url=pg_url, redis_url=redis_url, redis_prefix=redis_prefix,
                        job_visibility_timeout_s=2.0, job_max_attempts=3, eval_max_time_s=0.3, eval_min_runs=20,
                        worker_port=0)
    ensure_schema(settings)
    ctx = make_context(settings)
    tiny_mlp(tmp_path / "tiny.onnx")
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "eval.npz", x=rng.random((64, 64), dtype=np.float32), labels=rng.integers(0, 10, 64))
    with ctx.sessions() as session, session.begin():
        register_model(session, ctx.store, tmp_path / "tiny.onnx", "tiny")
    env = {**os.environ, "MODELROLL_HOME": str(settings.home), "MODELROLL_DATABASE_URL": pg_url,
           "MODELROLL_REDIS_URL": redis_url, "MODELROLL_REDIS_PREFIX": redis_prefix,
           "MODELROLL_JOB_VISIBILITY_TIMEOUT_S": "2", "MODELROLL_WORKER_PORT": "0", "MODELROLL_LOG_LEVEL": "INFO"}
    channel = open_channel(settings)
    yield Stack(settings, ctx, channel, tmp_path / "eval.npz", env)
    channel.close()


def children_measuring(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, NotADirectoryError):
            continue
        ppid = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:")), None)
        if ppid == pid and b"optimizer.measure" in cmdline and "State:\tZ" not in status:
            found.append(int(entry.name))
    return found


def start_worker(stack: Stack, log: Path, **env: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([MODELROLL, "worker"], env={**stack.env, **env}, stdout=out, stderr=out)


def test_worker_killed_mid_evaluation_is_replaced_and_the_job_completes(stack: Stack, tmp_path: Path) -> None:
    job_id = stack.submit("int8")
    # Long timing windows so the first worker is surely inside an evaluation when it is killed.
    first = start_worker(stack, tmp_path / "first.log", MODELROLL_EVAL_MAX_TIME_S="20",
                         MODELROLL_EVAL_MIN_RUNS="10000000")
    try:
        wait_for(lambda: bool(children_measuring(first.pid)), 60, "the first worker to be measuring", 0.1)
        assert stack.job(job_id).status == "running" and stack.job(job_id).attempts == 1
        measuring = children_measuring(first.pid)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    def orphans_gone() -> bool:
        return not any(Path(f"/proc/{pid}").exists() and "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
                       for pid in measuring)

    wait_for(orphans_gone, 10, "the orphaned measurement to die with its worker", 0.1)
    port = free_port()
    second = start_worker(stack, tmp_path / "second.log", MODELROLL_EVAL_MAX_TIME_S="0.3",
                          MODELROLL_EVAL_MIN_RUNS="20", MODELROLL_WORKER_PORT=str(port))
    try:
        wait_for(lambda: stack.job(job_id).status == "succeeded", 120, "the job to succeed on the second worker", 0.1)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'modelroll_worker_jobs_total{outcome="succeeded"} 1.0' in metrics
        second.send_signal(signal.SIGTERM)
        assert second.wait(15) == 0  # graceful stop
    finally:
        if second.poll() is None:
            second.kill()
    job = stack.job(job_id)
    assert job.attempts == 2 and job.progress == 1.0 and job.error == ""
    with stack.ctx.sessions() as session:
        rows = session.scalars(select(CandidateReportRow).where(CandidateReportRow.job_id == job_id)).all()
        assert [(r.name, r.status) for r in rows] == [("int8", "measured")]
        variant = session.get(VariantRow, rows[0].variant_id)
        assert variant is not None and variant.name == f"int8-j{job_id}" and variant.role == "candidate"
        parent = session.get(VariantRow, variant.parent_id)
        assert parent is not None and parent.name == "baseline"
        assert rows[0].gates["accuracy"]["threshold"] == 0.02 and "latency_p50_b1" in rows[0].gates
    assert stack.channel.dead_letters(QUEUE) == []


def run_in_process(stack: Stack, job_id: int, **settings: float) -> Worker:
    """A worker thread on the real channel and database until job `job_id` is done (or 60 s pass)."""
    stop = threading.Event()
    ctx = make_context(stack.settings.model_copy(update=settings)) if settings else stack.ctx
    worker = Worker(ctx, stack.channel, stop, poll_interval_s=0.05, sweep_interval_s=0.2,
                    on_idle=lambda: stop.set() if stack.job(job_id).status in ("succeeded", "failed") else None)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    thread.join(60)
    stop.set()
    assert not thread.is_alive()
    return worker


def test_a_failing_candidate_fails_alone_and_the_job_succeeds(stack: Stack) -> None:
    job_id = stack.submit("int8", "int8:exclude=999")
    run_in_process(stack, job_id)
    assert stack.job(job_id).status == "succeeded"
    with stack.ctx.sessions() as session:
        rows = {r.name: r for r in session.scalars(select(CandidateReportRow)
                                                   .where(CandidateReportRow.job_id == job_id))}
    assert rows["int8"].status == "measured" and rows["int8"].variant_id is not None
    failed = next(r for name, r in rows.items() if name != "int8")
    assert failed.status == "failed" and "exclude=999 is more than the 2 weight nodes" in failed.error


def test_job_whose_workers_keep_dying_is_dead_lettered_and_marked_failed(stack: Stack) -> None:
    job_id = stack.submit("int8")
    # A consumer that claims and never acks is exactly what the queue sees of a worker killed mid-job.
    claimed = stack.channel.claim_job(QUEUE, "doomed", 2.0, 1)
    assert claimed is not None and orjson.loads(claimed.payload) == {"job_id": job_id}
    with stack.ctx.sessions() as session:
        session.get(OptimizationJobRow, job_id).status = "running"  # type: ignore[union-attr]
        session.get(OptimizationJobRow, job_id).attempts = 1  # type: ignore[union-attr]
        session.commit()
    time.sleep(2.1)  # the dead claim's visibility timeout
    worker = run_in_process(stack, job_id, job_max_attempts=1)
    job = stack.job(job_id)
    assert job.status == "failed" and job.attempts == 1
    assert job.error == "dead-lettered after 1 attempt(s): the worker died during attempt 1 (killed, out of memory " \
                        "or hung)"
    assert [orjson.loads(j.payload) for j in stack.channel.dead_letters(QUEUE)] == [{"job_id": job_id}]
    assert worker.metrics.dead._value.get() == 1


def test_job_with_a_missing_baseline_artifact_fails_without_retries(stack: Stack) -> None:
    job_id = stack.submit("int8")
    for blob in (stack.settings.effective_artifacts_dir).glob("??/*"):
        if blob.stat().st_size > 100_000:  # the model, not the eval data
            blob.chmod(0o644)
            blob.unlink()
    run_in_process(stack, job_id)
    job = stack.job(job_id)
    assert job.status == "failed" and "is not in the artifact store" in job.error and job.attempts == 1
    assert stack.channel.claim_job(QUEUE, "probe", 0.001, 5) is None  # acked: nothing left to retry


def test_stopping_mid_job_kills_the_measurement_and_leaves_the_job_to_be_retried(stack: Stack) -> None:
    job_id = stack.submit("int8")
    stop = threading.Event()
    ctx = make_context(stack.settings.model_copy(update={"eval_max_time_s": 60.0, "eval_min_runs": 10_000_000}))
    worker = Worker(ctx, stack.channel, stop, poll_interval_s=0.05)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    wait_for(lambda: bool(children_measuring(os.getpid())), 30, "the worker to be measuring", 0.1)
    started = time.monotonic()
    stop.set()  # what SIGTERM does in `modelroll worker`
    thread.join(15)
    assert not thread.is_alive() and time.monotonic() - started < 10
    assert children_measuring(os.getpid()) == []
    job = stack.job(job_id)
    assert job.status == "retrying" and "worker stopped during attempt 1" in job.message
    time.sleep(2.1)  # visibility timeout: the unacknowledged job is handed out again
    again = stack.channel.claim_job(QUEUE, "next", 2.0, 3)
    assert again is not None and again.attempts == 2


def test_a_job_longer_than_the_visibility_timeout_stays_with_its_worker(stack: Stack) -> None:
    job_id = stack.submit("int8")
    stolen: list[int] = []
    done = threading.Event()

    def thief() -> None:  # a second worker polling the queue once the first one has the job
        while not done.is_set() and stack.job(job_id).status != "running":
            time.sleep(0.02)
        while not done.is_set():
            job = stack.channel.claim_job(QUEUE, "thief", 0.6, 3)
            if job is not None:
                stolen.append(job.attempts)
            time.sleep(0.05)

    poller = threading.Thread(target=thief, daemon=True)
    poller.start()
    started = time.monotonic()
    try:
        run_in_process(stack, job_id, job_visibility_timeout_s=0.6, eval_max_time_s=1.0, eval_min_runs=10_000_000)
    finally:
        done.set()
        poller.join(5)
    assert time.monotonic() - started > 3 * 0.6  # it did outlast the timeout several times
    job = stack.job(job_id)
    assert job.status == "succeeded" and job.attempts == 1 and stolen == []


def test_job_over_a_tampered_baseline_artifact_fails_at_once_with_the_reason(stack: Stack) -> None:
    job_id = stack.submit("int8")
    for blob in (stack.settings.effective_artifacts_dir).glob("??/*"):
        if blob.stat().st_size > 100_000:  # the model, not the eval data
            data = bytearray(blob.read_bytes())
            data[len(data) // 2] ^= 0x01  # one byte of the weights: only the hash can tell
            blob.chmod(0o644)
            blob.write_bytes(bytes(data))
    started = time.monotonic()
    worker = run_in_process(stack, job_id)
    job = stack.job(job_id)
    assert job.status == "failed" and job.attempts == 1 and job.message == "failed"
    assert job.error.startswith("artifact hash mismatch: the bytes of artifact ") and "re-register" in job.error
    assert time.monotonic() - started < 30  # not retried until the attempts run out
    assert worker.metrics.jobs.labels(outcome="failed")._value.get() == 1
    assert stack.channel.claim_job(QUEUE, "probe", 0.001, 5) is None  # acked: nothing left to retry
