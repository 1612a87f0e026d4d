"""The reconciler on real PostgreSQL and Redis: recorded samples promote or roll back; fencing; one leader."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from controller import aggregate
from controller.fencing import StaleLeader, fenced
from modelroll.db import RolloutEventRow, RolloutRow, SampleWindowRow
from tests.integration.controller_world import World, add_report, good_samples, make_world

pytestmark = pytest.mark.timeout(120)


@pytest.fixture()
def world(pg_url: str, redis_url: str, redis_prefix: str) -> Iterator[World]:
    yield from make_world(pg_url, redis_url, redis_prefix, leader_lease_s=3.0)


def create(world: World, steps: list[dict[str, Any]], **extra: Any) -> int:
    with world.client() as client:
        r = client.post("/v1/rollouts", headers=world.auth("operator"),
                        json={"model": "digits", "baseline": "fp32", "candidate": "int8", "steps": steps, **extra})
        assert r.status_code == 201, r.text
        return int(r.json()["id"])


def events(world: World, rollout_id: int) -> list[RolloutEventRow]:
    with world.session_factory() as s:
        return list(s.scalars(select(RolloutEventRow).where(RolloutEventRow.rollout_id == rollout_id)
                              .order_by(RolloutEventRow.seq)))


def phase(world: World, rollout_id: int) -> str:
    with world.session_factory() as s:
        return s.get(RolloutRow, rollout_id).phase  # type: ignore[union-attr]


def lead(world: World, holder: str = "a") -> Any:
    rec = world.reconciler(holder)
    assert rec.elector.poll() is not None
    return rec


def test_rollout_driven_by_recorded_samples_promotes(world: World) -> None:
    rid = create(world, [{"weight_pct": 0, "shadow": True, "min_duration_s": 30, "min_samples": 500},
                         {"weight_pct": 100, "min_duration_s": 0, "min_samples": 100}])
    rec = lead(world)
    assert rec.tick()
    split = world.channel.get_splits()["digits"]
    assert phase(world, rid) == "shadow" and split.shadow == "int8" and dict(split.weights) == {"fp32": 100.0,
                                                                                               "int8": 0.0}
    world.channel.append_samples(good_samples(rid, 0, 2000, 1_000_000.0, shadow=True))
    rec.tick()
    assert phase(world, rid) == "shadow"  # every criterion passes, but the step's 30 s have not passed
    with world.session_factory() as s:
        row = s.get(RolloutRow, rid)
        assert row is not None
        assert row.evaluation["verdict"] == "pass" and row.version == 2  # evaluation does not bump the version
        assert {r["criterion"] for r in row.evaluation["results"]} == {
            "latency_p50", "latency_p95", "memory", "accuracy", "errors"}
        assert s.scalar(select(SampleWindowRow.id).where(SampleWindowRow.rollout_id == rid)) is not None
    world.clock.advance(31)
    rec.tick()
    assert phase(world, rid) == "progressing"
    assert dict(world.channel.get_splits()["digits"].weights) == {"fp32": 0.0, "int8": 100.0}
    world.channel.append_samples(good_samples(rid, 1, 150, 1_000_100.0, shadow=False, baseline=False))
    rec.tick()
    assert phase(world, rid) == "promoted"
    assert dict(world.channel.get_splits()["digits"].weights) == {"int8": 100.0}
    evs = events(world, rid)
    assert [e.kind for e in evs] == ["created", "started", "advanced", "promoted"]
    assert [e.seq for e in evs] == [1, 2, 3, 4]
    assert all(e.fencing_token == rec.elector.token() for e in evs[1:])
    assert evs[2].evidence["verdict"] == "pass" and len(evs[2].evidence["results"]) == 5
    assert rec.counts["samples_folded"] > 4000


def test_shadow_answers_pass_accuracy_before_any_label_and_the_next_look_carries_the_interval(world: World) -> None:
    rid = create(world, [{"weight_pct": 0, "shadow": True, "min_duration_s": 3600, "min_samples": 100},
                         {"weight_pct": 100, "min_duration_s": 0, "min_samples": 100}])
    rec = lead(world)
    rec.tick()
    # Both arms answer every request alike and no label comes back: only the label-free bound can decide.
    unlabelled = [replace(s, prediction=[1]) if s.kind == "request" else s
                  for s in good_samples(rid, 0, 3000, 3_000_000.0, shadow=True, seed=7) if s.kind != "feedback"]
    world.channel.append_samples(unlabelled)
    rec.tick()

    def accuracy() -> dict[str, Any]:
        with world.session_factory() as s:
            row = s.get(RolloutRow, rid)
            assert row is not None
            return next(r for r in row.evaluation["results"] if r["criterion"] == "accuracy")

    first = accuracy()
    assert first["verdict"] == "pass", first["message"]
    assert "agreement 100.0 % [99." in first["message"] and "accuracy can drop at most 0." in first["message"]
    assert "carried" not in first["sequences"]["accuracy"]
    rec.tick()  # nothing new: the next look carries the first look's interval
    second = accuracy()
    assert second["verdict"] == "pass"
    assert second["sequences"]["accuracy"]["carried"] == [first["ci_low"], first["ci_high"]]


def test_candidate_errors_roll_back_at_once(world: World) -> None:
    rid = create(world, [{"weight_pct": 10, "min_duration_s": 0, "min_samples": 10},
                         {"weight_pct": 100, "min_duration_s": 0, "min_samples": 10}])
    rec = lead(world)
    rec.tick()
    world.channel.append_samples(good_samples(rid, 0, 1500, 2_000_000.0, shadow=False, candidate_error_rate=0.3))
    rec.tick()
    assert phase(world, rid) == "rolled_back"
    assert dict(world.channel.get_splits()["digits"].weights) == {"fp32": 100.0}
    last = events(world, rid)[-1]
    assert last.kind == "rolled_back" and "errors" in last.reason and last.evidence["verdict"] == "fail"


def test_memory_verdict_shows_the_optimizers_offline_figure_beside_the_live_one(world: World) -> None:
    def memory_message(rid: int) -> str:
        with world.session_factory() as s:
            row = s.get(RolloutRow, rid)
            assert row is not None
            return str(next(r["message"] for r in row.evaluation["results"] if r["criterion"] == "memory"))

    rid = create(world, [{"weight_pct": 0, "shadow": True, "min_duration_s": 600, "min_samples": 100},
                         {"weight_pct": 100, "min_duration_s": 0, "min_samples": 100}])
    rec = lead(world)
    rec.tick()
    world.channel.append_samples(good_samples(rid, 0, 500, 1_000_000.0, shadow=True))
    rec.tick()
    assert "offline" not in memory_message(rid)  # int8 has no optimizer report yet
    report = add_report(world)
    base, cand = report.baseline.memory[1], report.candidate.memory[1]  # type: ignore[union-attr]
    world.channel.append_samples(good_samples(rid, 0, 500, 1_000_001.0, shadow=True))
    rec.tick()
    # where the candidate saves least (batch 32: 0.50×; batch 1 is 0.25×)
    assert f"(offline {cand.memory_bytes / base.memory_bytes:.2f}×)" in memory_message(rid)


def test_redelivered_samples_are_not_counted_twice(world: World) -> None:
    rid = create(world, [{"weight_pct": 50, "min_duration_s": 0, "min_samples": 10 ** 6}, {"weight_pct": 100}])
    rec = lead(world)
    rec.tick()
    world.channel.append_samples(good_samples(rid, 0, 100, 3_000_000.0, shadow=False))
    batch = world.channel.read_samples("controller", "leader", 10_000)  # delivered, never acked: a crashed leader
    assert len(batch.ids) > 200
    rec.fold_samples(rec.elector.token())
    rec.fold_samples(rec.elector.token())
    with world.session_factory() as s:
        total = sum(s.scalars(select(SampleWindowRow.requests).where(SampleWindowRow.rollout_id == rid)))
    assert total == 200


def test_a_stale_leader_cannot_write(world: World) -> None:
    with fenced(world.session_factory, 5, name="other") as s:
        s.execute(select(1))
    with pytest.raises(StaleLeader, match="fencing token 4 is stale"), fenced(world.session_factory, 4, "other") as s:
        s.execute(select(1))
    rid = create(world, [{"weight_pct": 50}, {"weight_pct": 100}])
    old = lead(world, "old")
    world.channel.release_lock("controller", "old")  # its lease is gone; it does not know yet
    new = lead(world, "new")
    assert new.elector.token() > old.elector.token()
    new.tick()
    assert [e.kind for e in events(world, rid)] == ["created", "started"]
    with world.session_factory() as s:
        version = s.get(RolloutRow, rid).version  # type: ignore[union-attr]
    old.tick()  # refused by the fence: steps down, writes nothing
    assert old.counts["stale_leader"] == 1 and old.elector.token() is None
    with world.session_factory() as s:
        assert s.get(RolloutRow, rid).version == version  # type: ignore[union-attr]
    assert len(events(world, rid)) == 2


def test_two_controllers_one_leader_and_the_standby_takes_over(world: World) -> None:
    a, b = world.reconciler("a"), world.reconciler("b")
    assert a.elector.poll() is not None
    assert b.elector.poll() is None
    assert not b.tick()
    a.elector.step_down()
    assert b.elector.poll() is not None and b.leading and not a.leading


def test_api_and_reconciler_cannot_both_write_a_rollout(world: World) -> None:
    rid = create(world, [{"weight_pct": 50, "min_duration_s": 0, "min_samples": 1}, {"weight_pct": 100}])
    rec = lead(world)
    rec.tick()  # started: version 2
    with world.client() as client:
        got = client.get(f"/v1/rollouts/{rid}", headers=world.auth("viewer"))
        assert got.headers["etag"] == '"2"'
        paused = client.post(f"/v1/rollouts/{rid}/pause", headers={**world.auth("operator"), "If-Match": '"2"'},
                             json={"reason": "check dashboards"})
        assert paused.status_code == 200 and paused.json()["phase"] == "paused"
        stale = client.post(f"/v1/rollouts/{rid}/abort", headers={**world.auth("operator"), "If-Match": '"2"'})
        assert stale.status_code == 409 and "is at version 3, you sent 2" in stale.json()["error"]
    rec.tick()
    assert phase(world, rid) == "paused"
    assert [e.kind for e in events(world, rid)] == ["created", "started", "paused"]


def test_a_leader_that_cannot_renew_stops_leading_when_its_lease_runs_out(world: World) -> None:
    import time

    from controller.leader import LeaderElector

    elector = LeaderElector(world.channel, "slow", lease_s=0.3)
    assert elector.poll() is not None and elector.token() is not None
    time.sleep(0.35)  # no renewal in time (a long GC pause, a stuck thread)
    assert elector.token() is None


def test_the_windows_cache_rereads_only_what_changed_and_sees_late_samples(world: World) -> None:
    rollout_id = create(world, [{"weight_pct": 0, "shadow": True, "min_duration_s": 600, "min_samples": 100},
                                {"weight_pct": 100, "min_duration_s": 0, "min_samples": 100}])
    t0 = world.clock.now.timestamp() // aggregate.WINDOW_S * aggregate.WINDOW_S + 1.0  # 1 s into a window
    routes = {rollout_id: aggregate.Route(rollout_id, "digits", "fp32", "int8", 0)}

    def fold_and_store(samples: list[Any]) -> None:
        windows, _ = aggregate.fold(samples, routes, {"digits": routes[rollout_id]})
        with world.session_factory() as session, session.begin():
            aggregate.store(session, windows, None)

    for k in range(6):  # 6 windows a side
        fold_and_store(good_samples(rollout_id, 0, 20, t0 + k * aggregate.WINDOW_S, shadow=False))
    cache = aggregate.WindowCache()
    with world.session_factory() as session:
        assert len(cache.load(session, rollout_id)) == cache.last_read == 12  # the first read is whole
    with world.session_factory() as session, session.begin():  # time passes: nothing written for an hour
        session.execute(update(SampleWindowRow).values(updated_at=func.now() - timedelta(hours=1)))
    with world.session_factory() as session:
        assert len(cache.load(session, rollout_id)) == 12 and cache.last_read == 0

    fold_and_store(good_samples(rollout_id, 0, 5, t0 + 3600, shadow=False))  # a new window a side
    fold_and_store(good_samples(rollout_id, 0, 5, t0 + 0.5, shadow=False))  # late samples: the oldest windows
    with world.session_factory() as session:
        cached = cache.load(session, rollout_id)
        whole = aggregate.load_windows(session, rollout_id)
    assert cache.last_read == 4  # the two new windows and the two old ones that took the late samples
    assert sorted((w.id, w.requests, w.latency_ms.size) for w in cached) == \
        sorted((w.id, w.requests, len(w.data["latency_ms"])) for w in whole)
    assert sum(w.requests for w in cached if w.variant == "int8") == 130
    cache.keep_only([])
    with world.session_factory() as session:
        assert len(cache.load(session, rollout_id)) == cache.last_read == 14  # forgotten: read whole again
