"""Every load of an artifact is checked, restarts included: a changed candidate is refused, its traffic goes to the
split's baseline, readiness and the samples say why; a forced request whose variant cannot answer falls back."""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path

import onnx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelroll import catalog, migrate
from modelroll.artifacts import ArtifactStore
from modelroll.db import make_engine, make_session_factory
from modelroll.live.base import SplitConfig
from modelroll.live.memory import MemoryChannel
from router.runner_subprocess import SubprocessRunner, child_pids
from router.runners import RunnerError, RunnerRefused
from router.variants import CatalogVariantSource, StaticVariantSource, VariantSpec
from tests.router_fixtures import (
    SampleLog,
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

pytestmark = pytest.mark.timeout(180)

ADMIN = {"Authorization": "Bearer root-secret"}


def tampered_bytes(path: Path) -> bytes:
    """The model with one weight changed: still a valid model that loads and answers, only its hash can tell."""
    model = onnx.load(str(path))
    weights = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    raw = bytearray(weights.raw_data)
    raw[len(raw) // 2] ^= 0x01
    weights.raw_data = bytes(raw)
    return model.SerializeToString()


def tamper(path: Path) -> None:
    data = tampered_bytes(path)
    os.chmod(path, 0o644)  # the store keeps its files read-only: an attacker or a bad disk does not ask
    path.write_bytes(data)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fallbacks(text: str) -> dict[tuple[str, str], float]:
    return {(s.labels["variant"], s.labels["reason"]): s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "modelroll_fallbacks_total"}


class Catalog:
    """digits registered in PostgreSQL with int8 as a candidate, files in an artifact store."""

    def __init__(self, tmp_path: Path, pg_url: str, paths: dict[str, Path], **settings: object) -> None:
        self.settings = router_settings(tmp_path, database_url=pg_url, admin_token="root-secret", **settings)
        migrate.ensure_schema(self.settings)
        self.engine = make_engine(self.settings)
        self.sessions = make_session_factory(self.engine)
        self.store = ArtifactStore(tmp_path / "artifacts")
        with self.sessions.begin() as session:
            catalog.register_model(session, self.store, paths["baseline"], "digits")
            catalog.add_variant(session, self.store, "digits", "int8", paths["int8"])
        self.int8_blob = self.store.stored_path(_sha(paths["int8"]))

    def source(self) -> CatalogVariantSource:
        return CatalogVariantSource(self.sessions, self.store)


def _publish(app, channel: MemoryChannel, split: SplitConfig) -> None:  # type: ignore[no-untyped-def]
    stored = channel.publish_split(split)
    wait_for(lambda: split_version(app, split.model) == stored.version, 30, "split applied")


def test_a_subprocess_runner_restarted_on_a_changed_artifact_refuses_it_and_says_why(
        tmp_path: Path, digits_paths: dict[str, Path], pg_url: str) -> None:
    world = Catalog(tmp_path, pg_url, digits_paths, router_runner="subprocess", router_breaker_failures=1000)
    channel = MemoryChannel()
    log = SampleLog(channel)
    rows, _ = digits_rows(1)
    with running_app(world.settings, channel, world.source()) as app:
        _publish(app, channel, SplitConfig("digits", {"baseline": 50.0, "int8": 50.0}, rollout_id=3, step=2))
        runner = app.table.routes["digits"].variants["int8"].runner
        tamper(world.int8_blob)
        os.kill(child_pids(runner)[0], signal.SIGKILL)

        async def go() -> None:
            async with client(app) as c:
                # The first request routed to int8 after the kill finds its child gone and starts the restart, which
                # checks the file; until then the baseline answers int8's share.
                for i in range(20):
                    answer = await c.post("/v2/models/digits/infer", content=infer_body(rows),
                                          headers={"x-modelroll-key": f"k{i}"})
                    assert answer.status_code == 200 and answer.headers["x-modelroll-variant"] == "baseline"
                wait_for(lambda: "int8" in app.table.routes["digits"].cannot_serve, 60, "the restart to refuse int8")
                served = set()
                for i in range(60):
                    answer = await c.post("/v2/models/digits/infer", content=infer_body(rows),
                                          headers={"x-modelroll-key": f"u{i}"})
                    assert answer.status_code == 200
                    served.add(answer.headers["x-modelroll-variant"])
                assert served == {"baseline"}  # not one request answered by the changed model
                ready = await c.get("/v2/health/ready")
                assert ready.status_code == 200  # the baseline serves: the router stays in service
                why = ready.json()["models"]["digits"]["cannot_serve"]["int8"]
                assert why.startswith("artifact hash mismatch: the bytes of artifact ")
                version = await c.get("/v2/models/digits/versions/int8/ready")
                assert version.status_code == 503 and "artifact hash mismatch" in version.json()["error"]
                split = app.table.routes["digits"].split
                int8_share = sum(split.choose("digits", f"u{i}") == "int8" for i in range(60))
                assert _fallbacks((await c.get("/metrics")).text)[("int8", "unavailable")] == int8_share > 0
                forced = await c.post("/v2/models/digits/versions/int8/infer", content=infer_body(rows),
                                      headers=ADMIN)
                assert forced.status_code == 200 and forced.headers["x-modelroll-variant"] == "baseline"
                assert forced.headers["x-modelroll-fallback"] == "unavailable"
        run(go())
        assert runner.refused.startswith("artifact hash mismatch") and child_pids(runner) == []
        reports = log.wait(lambda s: any(x.kind == "cannot_serve" for x in s))
        report = next(s for s in reports if s.kind == "cannot_serve")
        assert (report.model, report.variant, report.rollout_id, report.step) == ("digits", "int8", 3, 2)
        assert report.reason == app.table.routes["digits"].cannot_serve["int8"]
        assert report.reason.startswith("artifact hash mismatch")
        # Putting the genuine bytes back and a new split (the controller's decision) serves the candidate again.
        world.store.put_file(digits_paths["int8"], "onnx")
        _publish(app, channel, SplitConfig("digits", {"baseline": 0.0, "int8": 100.0}, rollout_id=3, step=3))
        assert app.table.routes["digits"].cannot_serve == {} and "int8" in app.table.routes["digits"].variants
    world.engine.dispose()


def test_the_inline_runner_refuses_a_changed_artifact_at_load_and_readiness_says_why(
        tmp_path: Path, digits_paths: dict[str, Path], pg_url: str) -> None:
    world = Catalog(tmp_path, pg_url, digits_paths, router_runner="inline")
    tamper(world.int8_blob)
    channel = MemoryChannel()
    rows, _ = digits_rows(1)
    with running_app(world.settings, channel, world.source()) as app:
        _publish(app, channel, SplitConfig("digits", {"baseline": 0.0, "int8": 100.0}, rollout_id=1, step=0))

        async def go() -> None:
            async with client(app) as c:
                answer = await c.post("/v2/models/digits/infer", content=infer_body(rows))
                assert answer.status_code == 200 and answer.headers["x-modelroll-variant"] == "baseline"
                ready = (await c.get("/v2/health/ready")).json()
                assert ready["ready"] is True
                assert "artifact hash mismatch" in ready["models"]["digits"]["cannot_serve"]["int8"]
        run(go())
    world.engine.dispose()


def test_a_plain_file_changed_under_a_subprocess_runner_is_refused_on_restart(
        tmp_path: Path, digits_paths: dict[str, Path]) -> None:
    path = tmp_path / "int8.onnx"
    path.write_bytes(digits_paths["int8"].read_bytes())
    refused: list[str] = []
    runner = SubprocessRunner(path, on_refused=refused.append)  # no recorded hash: the first load pins it
    try:
        assert runner.sha256 == _sha(digits_paths["int8"])
        tamper(path)
        os.kill(child_pids(runner)[0], signal.SIGKILL)
        rows, _ = digits_rows(1)
        with pytest.raises(RunnerError, match=r"not running|died"):
            runner.run({"input": rows})
        wait_for(lambda: refused, 60, "the restart to refuse the changed file")
        assert refused[0].startswith("artifact hash mismatch") and runner.refused == refused[0]
        with pytest.raises(RunnerRefused, match="artifact hash mismatch"):
            runner.run({"input": rows})
    finally:
        runner.close()
    with pytest.raises(RunnerRefused, match="artifact hash mismatch"):  # a first start given the hash refuses too
        SubprocessRunner(path, sha256=_sha(digits_paths["int8"]))


def test_a_forced_request_whose_runner_just_died_is_answered_by_the_baseline_and_says_so(
        tmp_path: Path, digits_paths: dict[str, Path]) -> None:
    channel = MemoryChannel()
    rows, _ = digits_rows(1)
    source = StaticVariantSource([VariantSpec("digits", "baseline", "baseline", digits_paths["baseline"]),
                                  VariantSpec("digits", "int8", "candidate", digits_paths["int8"],
                                              runner="subprocess")])
    settings = router_settings(tmp_path, admin_token="root-secret", router_breaker_failures=1000)
    with running_app(settings, channel, source) as app:
        _publish(app, channel, SplitConfig("digits", {"baseline": 90.0, "int8": 10.0}, rollout_id=2, step=1))
        runner = app.table.routes["digits"].variants["int8"].runner

        async def go() -> None:
            async with client(app) as c:
                for url, headers in (("/v2/models/digits/versions/int8/infer", ADMIN),
                                     ("/v2/models/digits/infer", {**ADMIN, "x-modelroll-variant": "int8"})):
                    answer = await c.post(url, content=infer_body(rows), headers=headers)
                    assert answer.status_code == 200 and answer.headers["x-modelroll-variant"] == "int8"
                    assert "x-modelroll-fallback" not in answer.headers
                    os.kill(child_pids(runner)[0], signal.SIGKILL)
                    answer = await c.post(url, content=infer_body(rows), headers=headers)
                    assert answer.status_code == 200, answer.text
                    assert answer.headers["x-modelroll-variant"] == "baseline"
                    assert answer.headers["x-modelroll-fallback"] == "error"
                    assert answer.json()["model_version"] == "baseline"
                    wait_for(lambda: child_pids(runner), 60, "the child restarted")
                assert _fallbacks((await c.get("/metrics")).text)[("int8", "error")] == 2
        run(go())
