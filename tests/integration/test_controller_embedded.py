"""The embedded mode runs the same controller code: SQLite file + in-process channel, a rollout promotes."""

from __future__ import annotations

from datetime import timedelta

from alembic import command
from sqlalchemy import select

from controller.reconcile import Reconciler
from modelroll import migrate
from modelroll.db import ApiTokenRow, Base, RolloutEventRow, make_engine, make_session_factory
from modelroll.live import open_channel
from modelroll.settings import Settings
from tests.integration.controller_world import Clock, good_samples, seed


def test_embedded_controller_promotes_on_sqlite_and_the_memory_channel(embedded_settings: Settings) -> None:
    from fastapi.testclient import TestClient

    from controller.app import create_app
    from controller.auth import create_token

    settings = embedded_settings
    engine = make_engine(settings)
    Base.metadata.create_all(engine)
    command.stamp(migrate.alembic_config(settings), "head")
    factory = make_session_factory(engine)
    seed(factory)
    with factory() as s, s.begin():
        token = create_token(s, "op", "operator")
    channel = open_channel(settings)
    clock = Clock()
    rec = Reconciler(settings, channel, factory, holder="solo", clock=clock)
    assert rec.elector.poll() is not None
    with TestClient(create_app(settings, channel, factory, reconciler=rec)) as client:
        r = client.post("/v1/rollouts", headers={"Authorization": f"Bearer {token}"}, json={
            "model": "digits", "baseline": "fp32", "candidate": "int8",
            "steps": [{"weight_pct": 0, "shadow": True, "min_duration_s": 0, "min_samples": 100},
                      {"weight_pct": 100, "min_duration_s": 0, "min_samples": 100}]})
        assert r.status_code == 201, r.text
        rid = r.json()["id"]
        rec.tick()
        channel.append_samples(good_samples(rid, 0, 2000, 1_000_000.0, shadow=True))
        rec.tick()
        channel.append_samples(good_samples(rid, 1, 150, 1_000_100.0, shadow=False, baseline=False))
        rec.tick()
        assert client.get(f"/v1/rollouts/{rid}").json()["phase"] == "promoted"
        assert "modelroll_controller_leader 1.0" in client.get("/metrics").text
    with factory() as s:
        kinds = list(s.scalars(select(RolloutEventRow.kind).order_by(RolloutEventRow.seq)))
    assert kinds == ["created", "started", "advanced", "promoted"]
    channel.close()
    engine.dispose()


def test_a_token_keeps_working_after_its_first_use_on_sqlite(embedded_settings: Settings) -> None:
    """SQLite hands datetimes back without a zone: a token's last use, read back, must still compare with now."""
    from fastapi.testclient import TestClient

    from controller.app import create_app
    from controller.auth import create_token

    engine = make_engine(embedded_settings)
    Base.metadata.create_all(engine)
    factory = make_session_factory(engine)
    with factory() as s, s.begin():
        token = create_token(s, "op", "operator")
    channel = open_channel(embedded_settings)
    with TestClient(create_app(embedded_settings, channel, factory)) as client:
        for _ in range(2):  # the first use records last_used_at, the second reads it back
            r = client.get("/v1/rollouts", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200, r.text
    with factory() as s:
        used = s.scalars(select(ApiTokenRow.last_used_at)).one()
    assert used is not None and used.tzinfo is not None and used.utcoffset() == timedelta(0)
    channel.close()
    engine.dispose()
