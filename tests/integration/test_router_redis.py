"""The router on the Redis live channel: splits propagate fast, samples land, and it fails static without Redis."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from modelroll.live import open_channel
from modelroll.live.base import SplitConfig
from tests.loopback import RedisServer
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
    split_version,
    wait_for,
)

__all__ = ["digits_paths"]


def test_split_changes_reach_the_router_fast_and_samples_land_in_redis(
        tmp_path: Path, digits_paths: dict[str, Path], redis_url: str, redis_prefix: str) -> None:
    settings = router_settings(tmp_path, redis_url=redis_url, redis_prefix=redis_prefix)
    controller_side = open_channel(settings)
    log = SampleLog(open_channel(settings))
    rows, _ = digits_rows(1)
    with running_app(settings, open_channel(settings), digits_source(digits_paths)) as app:
        wait_for(lambda: app.live.connected, 10, "watcher connected")
        delays_ms = []
        for i in range(40):
            pct = float(1 + i % 50)
            start = time.perf_counter()
            stored = controller_side.publish_split(
                SplitConfig("digits", {"baseline": 100.0 - pct, "int8": pct}, rollout_id=1, step=i))
            wait_for(lambda v=stored.version: split_version(app, "digits") == v, 5, "split applied")
            delays_ms.append((time.perf_counter() - start) * 1000.0)
        assert statistics.median(delays_ms) < 100, delays_ms

        async def go() -> None:
            async with client(app) as c:
                for i in range(30):
                    answer = await c.post("/v2/models/digits/infer", content=infer_body(rows, f"redis-{i}"))
                    assert answer.status_code == 200
        run(go())
        samples = log.wait(lambda s: sum(x.kind == "request" for x in s) >= 30)
        assert {s.request_id for s in samples if s.kind == "request"} >= {f"redis-{i}" for i in range(30)}
        assert controller_side.take_prediction("redis-0") is not None
    controller_side.close()


def test_router_keeps_last_split_when_redis_is_down_and_catches_up_after(
        tmp_path: Path, digits_paths: dict[str, Path], private_redis: RedisServer) -> None:
    settings = router_settings(tmp_path, redis_url=private_redis.url, redis_timeout_s=0.3)
    controller_side = open_channel(settings)
    controller_side.publish_split(SplitConfig("digits", {"baseline": 50.0, "int8": 50.0}, rollout_id=8, step=4))
    rows, _ = digits_rows(1)
    with running_app(settings, open_channel(settings), digits_source(digits_paths)) as app:
        wait_for(lambda: app.table.routes["digits"].config is not None and app.live.connected, 10, "split")

        async def load(n: int, tag: str) -> set[str]:
            variants = set()
            async with client(app) as c:
                for i in range(n):
                    answer = await c.post("/v2/models/digits/infer", content=infer_body(rows, f"{tag}-{i}"),
                                          headers={"x-modelroll-key": f"user-{i}"})
                    assert answer.status_code == 200, answer.text
                    variants.add(answer.headers["x-modelroll-variant"])
            return variants

        assert run(load(50, "before")) == {"baseline", "int8"}
        private_redis.stop()
        stopped_at = time.monotonic()
        during = run(load(150, "during"))
        assert during == {"baseline", "int8"}  # the last split, still 50/50
        wait_for(lambda: app.recorder.unsent > 0 and app.degraded, 10, "unsent samples counted")

        async def readiness() -> dict:  # type: ignore[type-arg]
            async with client(app) as c:
                answer = await c.get("/v2/health/ready")
                assert answer.status_code == 200
                return answer.json()  # type: ignore[no-any-return]

        down = run(readiness())
        assert down["live_channel"] == "degraded" and down["samples"]["unsent"] > 0
        assert down["models"]["digits"]["weights"] == {"baseline": 50.0, "int8": 50.0}
        assert time.monotonic() - stopped_at < 30
        private_redis.start()  # empty: no persistence, the split hash is gone too
        wait_for(lambda: not app.degraded and app.recorder.pending == 0, 30, "reconnected and flushed")
        up = run(readiness())
        assert up["live_channel"] == "ok" and up["samples"]["unsent"] >= down["samples"]["unsent"]
        assert up["models"]["digits"]["weights"] == {"baseline": 50.0, "int8": 50.0}
        log = SampleLog(open_channel(settings))
        samples = log.wait(lambda s: sum(x.kind == "request" for x in s) >= 150)
        assert {f"during-{i}" for i in range(150)} <= {s.request_id for s in samples}
        controller_side = open_channel(settings)
        controller_side.publish_split(SplitConfig("digits", {"baseline": 100.0}, rollout_id=8, step=5))
        wait_for(lambda: app.table.routes["digits"].split.weights == {"baseline": 100.0}, 10, "new split after restart")
    controller_side.close()
