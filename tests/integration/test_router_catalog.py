"""The router serves what the catalog holds: variants from PostgreSQL rows, files from the artifact store."""

from __future__ import annotations

from pathlib import Path

from modelroll import catalog, migrate, production
from modelroll.artifacts import ArtifactStore
from modelroll.db import make_engine, make_session_factory
from modelroll.live.base import SplitConfig
from modelroll.live.memory import MemoryChannel
from router.variants import CatalogVariantSource
from tests.router_fixtures import (
    client,
    digits_paths,
    digits_rows,
    infer_body,
    router_settings,
    run,
    running_app,
    split_version,
    wait_for,
)

__all__ = ["digits_paths"]


def test_router_loads_catalog_variants_and_a_candidate_added_later(tmp_path: Path, digits_paths: dict[str, Path],
                                                                   pg_url: str) -> None:
    settings = router_settings(tmp_path, database_url=pg_url)
    migrate.ensure_schema(settings)
    engine = make_engine(settings)
    sessions = make_session_factory(engine)
    store = ArtifactStore(tmp_path / "artifacts")
    with sessions.begin() as session:
        catalog.register_model(session, store, digits_paths["baseline"], "digits")
    channel = MemoryChannel()
    rows, _ = digits_rows(2)
    with running_app(settings, channel, CatalogVariantSource(sessions, store)) as app:
        assert app.table.routes["digits"].split.weights == {"baseline": 100.0}
        with sessions.begin() as session:  # the optimizer registers a candidate while the router runs
            catalog.add_variant(session, store, "digits", "int8", digits_paths["int8"], recipe={"quantize": "int8"})
        stored = channel.publish_split(SplitConfig("digits", {"baseline": 0.0, "int8": 100.0}, rollout_id=1, step=5))
        wait_for(lambda: split_version(app, "digits") == stored.version, 30, "candidate loaded from the catalog")

        async def go() -> None:
            async with client(app) as c:
                answer = await c.post("/v2/models/digits/infer", content=infer_body(rows))
                assert answer.status_code == 200 and answer.headers["x-modelroll-variant"] == "int8"
                meta = (await c.get("/v2/models/digits")).json()
                assert sorted(meta["versions"]) == ["baseline", "int8"]
        run(go())
    engine.dispose()


def test_with_no_split_published_the_router_serves_the_production_variant_not_the_catalogs_baseline(
        tmp_path: Path, digits_paths: dict[str, Path], pg_url: str) -> None:
    settings = router_settings(tmp_path, database_url=pg_url)
    migrate.ensure_schema(settings)
    engine = make_engine(settings)
    sessions = make_session_factory(engine)
    store = ArtifactStore(tmp_path / "artifacts")
    with sessions.begin() as session:
        model, _ = catalog.register_model(session, store, digits_paths["baseline"], "digits")
        int8 = catalog.add_variant(session, store, "digits", "int8", digits_paths["int8"])
        production.set_production(session, model, int8, action=production.PROMOTED, actor="test")
    rows, _ = digits_rows(2)
    with running_app(settings, MemoryChannel(), CatalogVariantSource(sessions, store)) as app:
        routes = app.table.routes["digits"]
        assert routes.split.weights == {"int8": 100.0} and routes.fallback.name == "int8"

        async def go() -> None:
            async with client(app) as c:
                answer = await c.post("/v2/models/digits/infer", content=infer_body(rows))
                assert answer.status_code == 200 and answer.headers["x-modelroll-variant"] == "int8"
        run(go())
    engine.dispose()
