"""Samples a router sent for a rollout just before it ended still count in that rollout's evidence."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from modelroll.db import SampleWindowRow
from tests.integration.controller_world import World, good_samples, start_rollout

pytestmark = pytest.mark.timeout(120)


def _requests(world: World, rollout_id: int) -> int:
    with world.session_factory() as session:
        return int(session.scalar(select(func.coalesce(func.sum(SampleWindowRow.requests), 0))
                                  .where(SampleWindowRow.rollout_id == rollout_id)) or 0)


def test_samples_arriving_after_an_abort_are_folded_into_the_ended_rollouts_windows(world: World) -> None:
    rid = start_rollout(world)
    before = _requests(world, rid)
    with world.client() as client:
        etag = client.get(f"/v1/rollouts/{rid}", headers=world.auth("viewer")).headers["etag"]
        r = client.post(f"/v1/rollouts/{rid}/abort", headers={**world.auth("operator"), "If-Match": etag})
        assert r.status_code == 200 and r.json()["phase"] == "aborted"
    late = good_samples(rid, 0, 300, world.clock.now.timestamp() + 1, shadow=True, seed=3)
    world.channel.append_samples(late)
    leader = world.reconciler()  # the holder start_rollout led with
    assert leader.elector.poll() is not None
    leader.tick()
    assert _requests(world, rid) == before + sum(1 for s in late if s.kind == "request")
    assert leader.counts["samples_skipped"] == 0
