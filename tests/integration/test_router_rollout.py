"""Rollout behaviour of the router: fallback and ejection, shadow pairs, feedback, forcing, other runners."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from pathlib import Path

import numpy as np
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from modelroll.db import ApiTokenRow, Base, utcnow
from modelroll.live.base import SplitConfig
from modelroll.live.memory import MemoryChannel
from router.runner_subprocess import child_pids
from router.runners import RunnerTimeout
from router.variants import StaticVariantSource, VariantSpec
from tests.router_fixtures import (
    SampleLog,
    client,
    digits_paths,
    digits_rows,
    digits_source,
    infer_body,
    router_settings,
    run,
    running_app,
    served,
    wait_for,
)
from tests.router_models import build_slow

__all__ = ["digits_paths"]


def _publish(app, channel: MemoryChannel, split: SplitConfig) -> None:  # type: ignore[no-untyped-def]
    stored = channel.publish_split(split)
    wait_for(lambda: (app.table.routes[split.model].config or split).version == stored.version
             and app.table.routes[split.model].config is not None, 10, "split applied")


def test_crashing_candidate_never_reaches_the_client_and_gets_ejected(tmp_path: Path,
                                                                      digits_paths: dict[str, Path]) -> None:
    channel = MemoryChannel()
    log = SampleLog(channel)
    rows, _ = digits_rows(2)
    with running_app(router_settings(tmp_path, router_breaker_failures=5), channel,
                     digits_source(digits_paths)) as app:
        _publish(app, channel, SplitConfig("digits", {"baseline": 50.0, "broken": 50.0}, rollout_id=9, step=4))

        async def go() -> None:
            async with client(app) as c:
                codes = set()
                for i in range(60):
                    answer = await c.post("/v2/models/digits/infer", content=infer_body(rows),
                                          headers={"x-modelroll-key": f"k{i}"})
                    codes.add((answer.status_code, answer.headers.get("x-modelroll-variant")))
                assert codes == {(200, "baseline")}
                ready = (await c.get("/v2/health/ready")).json()
                assert ready["models"]["digits"]["ejected"] == ["broken"]
                metrics = (await c.get("/metrics")).text
                assert 'modelroll_variant_ejected{model="digits",variant="broken"} 1.0' in metrics
                assert 'modelroll_fallbacks_total{model="digits",reason="error",variant="broken"} 5.0' in metrics
                assert 'reason="ejected",variant="broken"' in metrics
        run(go())
        samples = log.wait(lambda s: sum(x.kind == "request" for x in s) >= 65)
        errors = [s for s in samples if s.kind == "request" and s.variant == "broken"]
        assert len(errors) == 5 and all(s.status == "error" and s.rollout_id == 9 and s.step == 4 for s in errors)
        ok = [s for s in samples if s.kind == "request" and s.status == "ok"]
        assert len(ok) == 60 and {s.variant for s in ok} == {"baseline"}
        # A new split is the controller's decision: the breaker is reset.
        _publish(app, channel, SplitConfig("digits", {"baseline": 90.0, "broken": 10.0}, rollout_id=9, step=5))
        assert not app.table.routes["digits"].variants["broken"].breaker.ejected


def test_candidate_over_its_deadline_falls_back_with_a_timeout_sample(tmp_path: Path,
                                                                      digits_paths: dict[str, Path]) -> None:
    channel = MemoryChannel()
    log = SampleLog(channel)
    rows, _ = digits_rows(1)
    settings = router_settings(tmp_path, router_candidate_timeout_s=0.0005, router_breaker_failures=1000)
    slow = VariantSpec("digits", "slow", "candidate", build_slow(tmp_path / "slow.onnx"))
    with running_app(settings, channel, digits_source({"baseline": digits_paths["baseline"]}, slow=slow)) as app:
        _publish(app, channel, SplitConfig("digits", {"baseline": 0.0, "slow": 100.0}, rollout_id=1, step=5))

        async def go() -> None:
            async with client(app) as c:
                for _ in range(10):
                    answer = await c.post("/v2/models/digits/infer", content=infer_body(rows))
                    assert answer.status_code == 200 and answer.headers["x-modelroll-variant"] == "baseline"
        run(go())
        samples = log.wait(lambda s: sum(x.status == "timeout" for x in s) >= 10)
        assert {s.variant for s in samples if s.status == "timeout"} == {"slow"}


def test_a_cancelled_request_is_cancelled_not_counted_as_a_candidate_timeout(tmp_path: Path,
                                                                            digits_paths: dict[str, Path]) -> None:
    slow = VariantSpec("digits", "slow", "candidate", build_slow(tmp_path / "slow.onnx", layers=40))
    with running_app(router_settings(tmp_path), MemoryChannel(),
                     digits_source({"baseline": digits_paths["baseline"]}, slow=slow)) as app:
        variant = app.table.variant("digits", "slow")
        inputs = {"input": digits_rows(64)[0]}

        async def go() -> None:
            call = asyncio.create_task(app.inference._call(variant, inputs, 30.0, app._executor))
            await asyncio.sleep(0.01)  # the call is now in the executor, its timer armed
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            outputs, latency_ms, _, error = await app.inference._call(variant, inputs, 0.001, app._executor)
            assert outputs is None and latency_ms == 1.0 and isinstance(error, RunnerTimeout)
        run(go())


def test_shadow_pairs_share_the_request_id_and_feedback_scores_both(tmp_path: Path,
                                                                    digits_paths: dict[str, Path]) -> None:
    channel = MemoryChannel()
    log = SampleLog(channel)
    rows, labels = digits_rows(20, offset=1500)
    with running_app(router_settings(tmp_path), channel, digits_source(digits_paths)) as app:
        _publish(app, channel, SplitConfig("digits", {"baseline": 100.0}, shadow="int8", rollout_id=2, step=0))

        async def go() -> None:
            async with client(app) as c:
                for i in range(20):
                    answer = await c.post("/v2/models/digits/infer", content=infer_body(rows[i:i + 1], f"s-{i}"))
                    assert answer.headers["x-modelroll-variant"] == "baseline"
                await app.inference.drain()
                wait_for(lambda: app.recorder.pending == 0, 5, "flush")
                feedback = [{"request_id": f"s-{i}", "label": int(labels[i])} for i in range(20)]
                feedback.append({"request_id": "s-0", "label": 1})  # second label for the same request
                answer = await c.post("/v1/feedback", content=orjson.dumps(feedback))
                assert answer.status_code == 200
                data = answer.json()
                assert data["joined"] == 20 and data["unknown"] == 1
                assert data["results"][0]["variants"] == ["baseline", "int8"]
        run(go())
        samples = log.wait(lambda s: sum(x.kind == "feedback" for x in s) >= 40)
        for i in range(20):
            pair = [s for s in samples if s.request_id == f"s-{i}" and s.kind == "request"]
            assert sorted((s.variant, s.shadow) for s in pair) == [("baseline", False), ("int8", True)]
            marks = [s for s in samples if s.request_id == f"s-{i}" and s.kind == "feedback"]
            assert sorted((s.variant, s.shadow) for s in marks) == [("baseline", False), ("int8", True)]
            assert all(s.rollout_id == 2 and s.step == 0 for s in pair + marks)
        base_correct = sum(bool(s.correct) for s in samples if s.kind == "feedback" and s.variant == "baseline")
        assert base_correct >= 17  # the trained MLP is ~97 % accurate on held-out digits
        int8_correct = sum(bool(s.correct) for s in samples if s.kind == "feedback" and s.variant == "int8")

        async def scrape() -> str:
            async with client(app) as c:
                return (await c.get("/metrics")).text
        metrics = _series(run(scrape()))
    # The dashboard's live accuracy and runner-time panels read these (shadow side included).
    assert metrics[("modelroll_feedback_total", "baseline", "correct")] == base_correct
    assert metrics.get(("modelroll_feedback_total", "baseline", "wrong"), 0.0) == 20 - base_correct
    assert metrics.get(("modelroll_feedback_total", "int8", "correct"), 0.0) == int8_correct
    assert metrics.get(("modelroll_feedback_total", "int8", "wrong"), 0.0) == 20 - int8_correct
    assert metrics[("modelroll_feedback_items_total", "", "joined")] == 20
    assert metrics[("modelroll_feedback_items_total", "", "unknown")] == 1
    assert metrics[("modelroll_model_latency_seconds_count", "baseline", "")] == 20
    assert metrics[("modelroll_model_latency_seconds_count", "int8", "")] == 20
    assert 0 < metrics[("modelroll_model_latency_seconds_sum", "int8", "")] < 20 * 0.5


def test_a_rollout_back_to_the_catalogs_baseline_mirrors_to_it_and_falls_back_to_what_serves(
        tmp_path: Path, digits_paths: dict[str, Path]) -> None:
    """int8 serves (promoted); rolling back out to the variant whose catalog role is `baseline` mirrors to it in the
    shadow step, and int8, the split's baseline, answers when it fails."""
    channel = MemoryChannel()
    log = SampleLog(channel)
    rows, _ = digits_rows(10, offset=1500)
    with running_app(router_settings(tmp_path), channel, digits_source(digits_paths)) as app:
        _publish(app, channel, SplitConfig("digits", {"int8": 100.0}, shadow="baseline", rollout_id=3, step=0,
                                           baseline="int8"))
        routes = app.table.routes["digits"]
        assert routes.fallback.name == "int8" and routes.shadow is not None and routes.shadow.name == "baseline"

        async def go() -> None:
            async with client(app) as c:
                for i in range(10):
                    answer = await c.post("/v2/models/digits/infer", content=infer_body(rows[i:i + 1], f"b-{i}"))
                    assert answer.headers["x-modelroll-variant"] == "int8"
                await app.inference.drain()
        run(go())
        samples = log.wait(lambda s: sum(x.kind == "request" for x in s) >= 20)
        for i in range(10):
            pair = sorted((s.variant, s.shadow) for s in samples if s.request_id == f"b-{i}" and s.kind == "request")
            assert pair == [("baseline", True), ("int8", False)]
        _publish(app, channel, SplitConfig("digits", {"int8": 50.0, "broken": 50.0}, rollout_id=4, step=1,
                                           baseline="int8"))
        assert app.table.routes["digits"].fallback.name == "int8"


def _series(text: str) -> dict[tuple[str, str, str], float]:
    """(name, variant, result or status) -> value of the router's /metrics text, for its digits series."""
    out: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("model", "digits") == "digits":
                key = (s.name, s.labels.get("variant", ""), s.labels.get("result", s.labels.get("status", "")))
                out[key] = s.value
    return out


def test_shadow_over_its_bound_is_skipped_and_counted(tmp_path: Path, digits_paths: dict[str, Path]) -> None:
    channel = MemoryChannel()
    rows, _ = digits_rows(1)
    with running_app(router_settings(tmp_path, router_shadow_max_concurrency=0), channel,
                     digits_source(digits_paths)) as app:
        _publish(app, channel, SplitConfig("digits", {"baseline": 100.0}, shadow="int8", rollout_id=2, step=0))

        async def go() -> None:
            async with client(app) as c:
                for _ in range(5):
                    assert (await c.post("/v2/models/digits/infer", content=infer_body(rows))).status_code == 200
                metrics = (await c.get("/metrics")).text
                assert 'modelroll_shadow_skipped_total{model="digits",variant="int8"} 5.0' in metrics
        run(go())
        assert app.inference.shadow_skipped == 5


def test_forcing_a_variant_needs_an_operator_or_admin_token(tmp_path: Path, digits_paths: dict[str, Path],
                                                            pg_url: str) -> None:
    engine = create_engine(pg_url)
    Base.metadata.create_all(engine)
    sessions = sessionmaker(engine, expire_on_commit=False)
    with sessions.begin() as session:
        for name, role, revoked in [("op", "operator", False), ("viewer", "viewer", False), ("old", "admin", True)]:
            session.add(ApiTokenRow(name=name, token_sha256=hashlib.sha256(f"tok-{name}".encode()).hexdigest(),
                                    role=role, revoked_at=utcnow() if revoked else None))
    rows, _ = digits_rows(1)
    settings = router_settings(tmp_path, admin_token="root-secret")
    with running_app(settings, MemoryChannel(), digits_source(digits_paths), token_sessions=sessions) as app:
        async def go() -> None:
            async with client(app) as c:
                async def force(token: str | None, via_path: bool = False) -> tuple[int, str]:
                    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
                    url = "/v2/models/digits/infer"
                    if via_path:
                        url = "/v2/models/digits/versions/int8/infer"
                    else:
                        headers["x-modelroll-variant"] = "int8"
                    answer = await c.post(url, content=infer_body(rows), headers=headers)
                    return answer.status_code, answer.headers.get("x-modelroll-variant") or answer.json()["error"]

                anonymous = (401, "forcing a variant needs an operator or admin token: send it as Authorization: "
                                  "Bearer <token>")
                forbidden = (403, "forcing a variant needs an operator or admin token; this one is not (unknown, "
                                  "revoked or of another role)")
                assert await force(None) == anonymous
                assert await force("tok-viewer") == forbidden
                assert await force("tok-old") == forbidden
                assert await force("wrong") == forbidden
                assert await force(None, via_path=True) == anonymous
                assert await force("tok-op") == (200, "int8")
                assert await force("tok-op", via_path=True) == (200, "int8")
                assert await force("root-secret") == (200, "int8")
                unknown = await c.post("/v2/models/digits/infer", content=infer_body(rows),
                                       headers={"Authorization": "Bearer tok-op", "x-modelroll-variant": "nope"})
                assert unknown.status_code == 404 and "nope" in unknown.json()["error"]
        run(go())
    engine.dispose()


def test_subprocess_candidate_killed_under_load_costs_no_client_request(tmp_path: Path,
                                                                        digits_paths: dict[str, Path]) -> None:
    channel = MemoryChannel()
    log = SampleLog(channel)
    rows, _ = digits_rows(1)
    source = digits_source({"baseline": digits_paths["baseline"], "int8": digits_paths["int8"]}, runner="subprocess")
    with running_app(router_settings(tmp_path, router_breaker_failures=1000), channel, source) as app:
        _publish(app, channel, SplitConfig("digits", {"baseline": 50.0, "int8": 50.0}, rollout_id=4, step=4))
        runner = app.table.routes["digits"].variants["int8"].runner
        first_pid = child_pids(runner)[0]

        async def go() -> None:
            async with client(app) as c:
                for i in range(120):
                    if i == 30:
                        os.kill(first_pid, signal.SIGKILL)
                    answer = await c.post("/v2/models/digits/infer", content=infer_body(rows),
                                          headers={"x-modelroll-key": f"u{i % 40}"})
                    assert answer.status_code == 200
        run(go())
        wait_for(lambda: child_pids(runner) and child_pids(runner)[0] != first_pid, 60, "child restarted")
        samples = log.wait(lambda s: any(x.kind == "memory" and x.variant == "int8" for x in s))
        memory = [s for s in samples if s.kind == "memory" and s.variant == "int8"]
        assert memory[-1].memory_total_bytes > memory[-1].memory_bytes > 0
        served_int8 = [s for s in samples if s.kind == "request" and s.variant == "int8" and s.status == "ok"]
        assert served_int8


def test_http_runner_serves_a_variant_from_a_remote_v2_server(tmp_path: Path, digits_paths: dict[str, Path]) -> None:
    remote_source = StaticVariantSource([VariantSpec("digits-remote", "baseline", "baseline", digits_paths["int8"])])
    rows, _ = digits_rows(3)
    with running_app(router_settings(tmp_path / "remote"), MemoryChannel(), remote_source) as remote, \
            served(remote) as url:
        channel = MemoryChannel()
        source = digits_source({"baseline": digits_paths["baseline"]},
                               remote=VariantSpec("digits", "remote", "candidate", url=url,
                                                  remote_model="digits-remote"))
        with running_app(router_settings(tmp_path), channel, source) as app:
            _publish(app, channel, SplitConfig("digits", {"baseline": 0.0, "remote": 100.0}, rollout_id=5, step=5))

            async def go() -> None:
                async with client(app) as c:
                    answer = await c.post("/v2/models/digits/infer", content=infer_body(rows))
                    assert answer.status_code == 200 and answer.headers["x-modelroll-variant"] == "remote"
                    data = np.array(answer.json()["outputs"][0]["data"]).reshape(3, 10)
                    assert data.shape == (3, 10)
            run(go())
        # The remote answered through the binary extension: it recorded the request as its own baseline.
        assert remote.recorder.sent + remote.recorder.pending >= 1
