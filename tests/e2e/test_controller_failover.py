"""Two real `modelroll controller` processes on PostgreSQL + Redis: kill -9 the leader mid-work, the standby takes
over within the lease, and the rollout finishes with every transition recorded exactly once."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from modelroll import migrate
from modelroll.db import RolloutEventRow, SampleWindowRow, make_engine, make_session_factory
from modelroll.live import open_channel
from modelroll.settings import Settings
from tests.e2e.processes import Controller, cli, wait_for
from tests.integration.controller_world import good_samples, seed

pytestmark = pytest.mark.timeout(180)

LEASE_S = 2.0


@pytest.fixture()
def env(pg_url: str, redis_url: str, redis_prefix: str, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "MODELROLL_DATABASE_URL": pg_url, "MODELROLL_REDIS_URL": redis_url,
            "MODELROLL_REDIS_PREFIX": redis_prefix, "MODELROLL_HOME": str(tmp_path / "home"),
            "MODELROLL_LEADER_LEASE_S": str(LEASE_S), "MODELROLL_RECONCILE_INTERVAL_S": "0.2",
            "MODELROLL_ALLOW_ANONYMOUS_VIEWER": "true", "MODELROLL_LOG_LEVEL": "INFO"}


@pytest.fixture()
def controllers(env: dict[str, str], tmp_path: Path) -> Iterator[list[Controller]]:
    settings = Settings(database_url=env["MODELROLL_DATABASE_URL"])
    migrate.upgrade(settings)
    engine = make_engine(settings)
    seed(make_session_factory(engine))
    engine.dispose()
    procs = [Controller(env, tmp_path / f"controller-{i}.log") for i in range(2)]
    yield procs
    for p in procs:
        p.stop()


def phase(c: Controller, rollout_id: int) -> str:
    return str(httpx.get(f"{c.url}/v1/rollouts/{rollout_id}", timeout=2).json()["phase"])


def test_leader_killed_standby_takes_over_with_no_lost_or_duplicated_transition(
        controllers: list[Controller], env: dict[str, str]) -> None:
    for c in controllers:
        url = f"{c.url}/healthz"
        wait_for(f"controller on {c.port} to answer", lambda url=url: httpx.get(url, timeout=1).is_success)  # type: ignore[misc]
    leader = wait_for("one leader", lambda: [c for c in controllers if c.leading()])
    assert len(leader) == 1
    leader, standby = leader[0], next(c for c in controllers if c is not leader[0])
    assert not standby.leading()

    env = {**env, "MODELROLL_TOKEN": cli(env, "tokens", "create", "--role", "operator", "--name", "e2e")["token"]}
    rollout = cli(env, "rollout", "create", "--model", "digits", "--baseline", "fp32", "--candidate", "int8",
                  "--steps", "shadow,100", "--min-duration-s", "0", "--min-samples", "100", "--url", leader.url)
    rid = rollout["id"]
    wait_for("the rollout to start", lambda: phase(standby, rid) == "shadow")

    settings = Settings(redis_url=env["MODELROLL_REDIS_URL"], redis_prefix=env["MODELROLL_REDIS_PREFIX"])
    channel = open_channel(settings)
    shadow = good_samples(rid, 0, 2000, time.time(), shadow=True)
    channel.append_samples(shadow)
    time.sleep(0.15)  # the leader is folding and deciding now
    leader.proc.send_signal(signal.SIGKILL)
    leader.proc.wait(5)
    killed_at = time.monotonic()
    wait_for("the standby to lead", standby.leading, timeout_s=LEASE_S * 3, every_s=0.02)
    takeover_s = time.monotonic() - killed_at
    assert takeover_s <= LEASE_S + 0.5, f"standby took {takeover_s:.2f} s to lead (lease {LEASE_S} s)"

    wait_for("the advance to 100 %", lambda: phase(standby, rid) == "progressing")
    full = good_samples(rid, 1, 150, time.time(), shadow=False, baseline=False, seed=1)
    channel.append_samples(full)
    wait_for("promotion", lambda: phase(standby, rid) == "promoted")
    final = cli(env, "rollout", "status", str(rid), "--url", standby.url)
    assert dict(channel.get_splits()["digits"].weights) == {"int8": 100.0}
    channel.close()

    kinds = [e["kind"] for e in final["events"]]
    assert kinds == ["created", "started", "advanced", "promoted"], kinds
    assert [e["seq"] for e in final["events"]] == [1, 2, 3, 4]
    tokens = [e["fencing_token"] for e in final["events"][1:]]
    assert tokens == sorted(tokens) and tokens[-1] > tokens[0]  # the later transitions came from the new leader

    engine = make_engine(Settings(database_url=env["MODELROLL_DATABASE_URL"]))
    with make_session_factory(engine)() as session:
        requests = sum(session.scalars(select(SampleWindowRow.requests).where(SampleWindowRow.rollout_id == rid)))
        assert session.scalar(select(RolloutEventRow.id).where(RolloutEventRow.kind == "promoted")) is not None
    engine.dispose()
    sent = sum(1 for s in shadow + full if s.kind == "request")
    assert requests == sent  # every request counted once across the kill


def test_sigterm_hands_leadership_over_within_a_second_at_the_default_lease(
        env: dict[str, str], tmp_path: Path) -> None:
    """A rolling update: the leader is stopped with SIGTERM. It releases the lock on its way out and exits 0, so the
    standby leads within a second, not after the 10 s lease runs out."""
    env = {**env, "MODELROLL_LEADER_LEASE_S": "10"}
    migrate.upgrade(Settings(database_url=env["MODELROLL_DATABASE_URL"]))
    procs = [Controller(env, tmp_path / f"controller-{i}.log") for i in range(2)]
    try:
        for c in procs:
            wait_for(f"controller on {c.port}", c.ready)
        [leader] = wait_for("one leader", lambda: [c for c in procs if c.leading()])
        standby = next(c for c in procs if c is not leader)
        leader.proc.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        wait_for("the standby to lead", standby.leading, timeout_s=5, every_s=0.01)
        handover_s = time.monotonic() - stopped_at
        assert leader.proc.wait(10) == 0, leader.log_tail()
        print(f"\nSIGTERM to the leader → standby leads in {handover_s * 1000:.0f} ms (lease 10 s)")
        assert handover_s < 1.0, f"hand-over took {handover_s:.2f} s"
        assert "controller stopping on SIGTERM" in leader.log_tail()
    finally:
        for c in procs:
            c.stop()
