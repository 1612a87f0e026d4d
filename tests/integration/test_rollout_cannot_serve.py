"""A candidate the routers cannot serve fails its rollout within 30 s, with the reason, and production stays the
baseline: a real router refuses the changed artifact and reports it over Redis, the leader folds it and the state
machine fails the rollout; the status page says why."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from controller.reconcile import Reconciler
from modelroll import production
from modelroll.db import ModelRow, RolloutEventRow, RolloutRow
from modelroll.live import open_channel
from modelroll.live.base import SplitConfig
from router.variants import StaticVariantSource, VariantSpec
from tests.integration.controller_world import World, make_world
from tests.integration.test_router_integrity import tampered_bytes
from tests.router_fixtures import digits_paths, router_settings, running_app, wait_for

__all__ = ["digits_paths"]

pytestmark = pytest.mark.timeout(180)


@pytest.fixture()
def world(pg_url: str, redis_url: str, redis_prefix: str) -> Iterator[World]:
    yield from make_world(pg_url, redis_url, redis_prefix, leader_lease_s=3.0)


def _login(client, token: str) -> None:  # type: ignore[no-untyped-def]
    r = client.post("/login", data={"token": token, "next": "/"}, follow_redirects=False)
    assert r.status_code == 303, r.text


def test_a_rollout_whose_candidate_cannot_load_fails_within_30_s_with_the_reason(
        world: World, tmp_path: Path, digits_paths: dict[str, Path]) -> None:
    # The catalog's fp32/int8 served from files; int8 changed after its hash was recorded.
    changed = tmp_path / "int8.onnx"
    changed.write_bytes(tampered_bytes(digits_paths["int8"]))
    recorded = hashlib.sha256(digits_paths["int8"].read_bytes()).hexdigest()
    source = StaticVariantSource([
        VariantSpec("digits", "fp32", "baseline", digits_paths["baseline"], production=True),
        VariantSpec("digits", "int8", "candidate", changed, sha256=recorded)])
    # The router's defaults for how often it reports (memory readings and cannot-serve reports: every 2 s).
    settings = router_settings(tmp_path, router_memory_interval_s=2.0, router_flush_interval_s=0.2)
    router_channel = open_channel(world.settings)
    reconciler = Reconciler(world.settings, world.channel, world.session_factory, holder="leader",
                            clock=lambda: datetime.now(UTC))
    try:
        with running_app(settings, router_channel, source) as router:
            reconciler.start()
            with world.client() as client:
                created = client.post("/v1/rollouts", headers=world.auth("operator"), json={
                    "model": "digits", "baseline": "fp32", "candidate": "int8",  # on_deadline: hold (the default)
                    "steps": [{"weight_pct": 50, "min_duration_s": 600, "min_samples": 100},
                              {"weight_pct": 100, "min_duration_s": 0, "min_samples": 100}]})
                assert created.status_code == 201, created.text
                rollout_id = int(created.json()["id"])
            started = time.monotonic()

            def phase() -> str:
                with world.session_factory() as session:
                    row = session.get(RolloutRow, rollout_id)
                    assert row is not None
                    return row.phase

            wait_for(lambda: phase() == "failed", 30, "the rollout to fail", every_s=0.1)
            took_s = time.monotonic() - started
            assert took_s < 30
            with world.session_factory() as session:
                row = session.get(RolloutRow, rollout_id)
                assert row is not None
                reason, weights, evaluation = row.last_reason, dict(row.weights), row.evaluation
                events = session.scalars(select(RolloutEventRow).where(RolloutEventRow.rollout_id == rollout_id)
                                         .order_by(RolloutEventRow.seq)).all()
                model = session.scalars(select(ModelRow).where(ModelRow.name == "digits")).one()
                serving = production.current_row(session, model.id)
            assert [e.kind for e in events][-2:] == ["started", "failed"]
            assert events[-1].actor == "controller" and events[-1].reason == reason
            assert "candidate 'int8' cannot serve (artifact hash mismatch: the bytes of artifact " in reason
            assert reason.endswith("'fp32' serves all traffic")
            assert events[-1].evidence["cannot_serve"]["candidate"].startswith("artifact hash mismatch")
            assert evaluation["cannot_serve"] == {"candidate": events[-1].evidence["cannot_serve"]["candidate"]}
            # Production stays what served before; the routers are told so by a final split.
            assert weights == {"fp32": 100.0}
            assert serving is not None and serving[1].name == "fp32"
            wait_for(lambda: router.table.routes["digits"].split.weights == {"fp32": 100.0}, 30,
                     "the router to follow the final split")
            assert router.table.routes["digits"].config == SplitConfig(
                "digits", {"fp32": 100.0}, version=router.table.routes["digits"].config.version,  # type: ignore[union-attr]
                baseline="fp32")
        with world.client() as client:
            _login(client, world.tokens["viewer"])
            page = client.get(f"/rollouts/{rollout_id}")
            assert page.status_code == 200
            assert 'id="cannot-serve-candidate"' in page.text and "artifact hash mismatch" in page.text
            assert "failed" in page.text
    finally:
        reconciler.stop()
        router_channel.close()
    print(f"rollout failed {took_s:.1f} s after it was created")
