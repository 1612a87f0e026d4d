"""The router app over the in-process live channel: every endpoint, both encodings, bad input of every kind."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
import pytest

from modelroll.live.base import SplitConfig
from modelroll.live.memory import MemoryChannel
from router.protocol import serialize_bytes
from router.runner_http import decode_response
from router.variants import StaticVariantSource, VariantSpec
from tests.router_fixtures import (
    SampleLog,
    all_types_path,
    client,
    digits_paths,
    digits_rows,
    digits_source,
    infer_body,
    router_settings,
    run,
    running_app,
)

__all__ = ["all_types_path", "digits_paths"]  # fixtures


def _reference(path: Path, rows: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": rows})[0]


def test_health_metadata_and_ready_endpoints(tmp_path: Path, digits_paths: dict[str, Path]) -> None:
    with running_app(router_settings(tmp_path), MemoryChannel(), digits_source(digits_paths)) as app:
        async def go() -> None:
            async with client(app) as c:
                assert (await c.get("/v2/health/live")).json() == {"live": True}
                ready = await c.get("/v2/health/ready")
                assert ready.status_code == 200
                body = ready.json()
                assert body["ready"] and body["live_channel"] == "ok"
                assert body["models"]["digits"]["weights"] == {"baseline": 100.0}
                meta = (await c.get("/v2/models/digits")).json()
                assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
                assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
                assert set(meta["versions"]) == {"baseline", "int8", "broken"}
                assert (await c.get("/v2/models/digits/versions/int8")).json()["inputs"] == meta["inputs"]
                assert (await c.get("/v2/models/digits/ready")).json() == {"name": "digits", "ready": True}
                assert (await c.get("/v2/models/digits/versions/baseline/ready")).status_code == 200
                not_loaded = await c.get("/v2/models/digits/versions/int8/ready")
                assert not_loaded.status_code == 503 and "not loaded" in not_loaded.json()["error"]
                assert (await c.get("/v2")).json()["extensions"] == ["binary_tensor_data"]
                for path, code in [("/v2/models/cats", 404), ("/v2/models/cats/ready", 404),
                                   ("/v2/models/digits/versions/nope", 404), ("/v3/nothing", 404),
                                   ("/v2/models/digits/versions/nope/ready", 404)]:
                    answer = await c.get(path)
                    assert answer.status_code == code and "error" in answer.json(), path
                wrong = await c.get("/v2/models/digits/infer")
                assert wrong.status_code == 405 and "use POST" in wrong.json()["error"]
                assert (await c.post("/v2/health/ready")).status_code == 405
                metrics = (await c.get("/metrics")).text
                assert 'modelroll_variant_weight_pct{model="digits",variant="baseline"} 100.0' in metrics
        run(go())


def test_infer_json_and_binary_match_onnxruntime(tmp_path: Path, digits_paths: dict[str, Path]) -> None:
    rows, _ = digits_rows(4)
    expected = _reference(digits_paths["baseline"], rows)
    with running_app(router_settings(tmp_path), MemoryChannel(), digits_source(digits_paths)) as app:
        async def go() -> None:
            async with client(app) as c:
                answer = await c.post("/v2/models/digits/infer", content=infer_body(rows, "req-42"))
                assert answer.status_code == 200
                assert "content-type" not in answer.request.headers  # accepted without one, like tritonclient
                data = answer.json()
                assert data["id"] == "req-42" and answer.headers["x-request-id"] == "req-42"
                assert data["model_version"] == "baseline" and data["outputs"][0]["shape"] == [4, 10]
                np.testing.assert_allclose(np.array(data["outputs"][0]["data"]).reshape(4, 10), expected, rtol=1e-5)
                blob = rows.astype(np.float32).tobytes()
                header = orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [4, 64],
                                                   "parameters": {"binary_data_size": len(blob)}}],
                                       "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]})
                answer = await c.post("/v2/models/digits/infer", content=header + blob,
                                      headers={"Inference-Header-Content-Length": str(len(header)),
                                               "x-request-id": "from-header"})
                assert answer.status_code == 200
                assert answer.headers["content-type"] == "application/octet-stream"
                out = decode_response(answer.content, int(answer.headers["inference-header-content-length"]))
                np.testing.assert_allclose(out["logits"], expected, rtol=1e-5)
                assert answer.headers["x-request-id"] == "from-header"
                generated = await c.post("/v2/models/digits/infer", content=infer_body(rows[:1]))
                assert generated.json()["id"] and generated.json()["id"] == generated.headers["x-request-id"]
        run(go())


def test_every_datatype_is_served_in_json_and_binary(tmp_path: Path, all_types_path: Path) -> None:
    source = StaticVariantSource([VariantSpec("types", "baseline", "baseline", all_types_path)])
    arrays = {
        "bool": np.array([[True, False, True]]), "uint8": np.array([[0, 7, 255]], np.uint8),
        "int8": np.array([[-128, 0, 127]], np.int8), "int32": np.array([[-5, 0, 2**31 - 1]], np.int32),
        "int64": np.array([[-(2**40), 0, 2**40]], np.int64), "fp16": np.array([[0.5, -1.25, 3.0]], np.float16),
        "fp32": np.array([[0.1, -2.5, 3e6]], np.float32), "fp64": np.array([[1e-300, -2.5, 3e300]], np.float64),
        "bytes": np.array(["héllo".encode(), b""], dtype=object),
    }
    datatype = {"bool": "BOOL", "uint8": "UINT8", "int8": "INT8", "int32": "INT32", "int64": "INT64",
                "fp16": "FP16", "fp32": "FP32", "fp64": "FP64", "bytes": "BYTES"}
    with running_app(router_settings(tmp_path), MemoryChannel(), source) as app:
        async def go() -> None:
            async with client(app) as c:
                inputs = [{"name": f"in_{k}", "datatype": datatype[k], "shape": list(v.shape),
                           "data": [x.decode() for x in v] if k == "bytes" else v.reshape(-1).tolist()}
                          for k, v in arrays.items()]
                answer = await c.post("/v2/models/types/infer", content=orjson.dumps({"inputs": inputs}))
                assert answer.status_code == 200, answer.text
                got = decode_response(answer.content, None)
                blobs, entries = [], []
                for k, v in arrays.items():
                    blob = serialize_bytes(v) if k == "bytes" else v.tobytes()
                    entries.append({"name": f"in_{k}", "datatype": datatype[k], "shape": list(v.shape),
                                    "parameters": {"binary_data_size": len(blob)}})
                    blobs.append(blob)
                header = orjson.dumps({"inputs": entries, "parameters": {"binary_data_output": True}})
                binary = await c.post("/v2/models/types/infer", content=header + b"".join(blobs),
                                      headers={"Inference-Header-Content-Length": str(len(header))})
                assert binary.status_code == 200, binary.text
                got_binary = decode_response(binary.content, int(binary.headers["inference-header-content-length"]))
                for k, v in arrays.items():
                    for result in (got, got_binary):
                        assert result[f"out_{k}"].dtype == v.dtype
                        np.testing.assert_array_equal(result[f"out_{k}"], v)
        run(go())


BAD_INFER = [
    (b"{", {}, 400, "not valid JSON"),
    (orjson.dumps({"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 64], "data": [0] * 64}]}), {},
     400, "does not match the model's FP32"),
    (orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 32], "data": [0] * 32}]}), {},
     400, "does not match the model's [-1, 64]"),
    (orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0] * 63}]}), {},
     400, "needs 64"),
    (orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64], "data": [0] * 64}]}), {},
     400, "unknown"),
    (orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0] * 64}]}),
     {"Inference-Header-Content-Length": "abc"}, 400, "must be an integer"),
    (orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0] * 64}]}),
     {"Inference-Header-Content-Length": "99999"}, 400, "Inference-Header-Content-Length is"),
    (b"x" * 5000, {}, 413, "limit is 4096 bytes"),
]


@pytest.mark.parametrize(("body", "headers", "code", "message"), BAD_INFER)
def test_bad_inference_requests_get_4xx_with_a_reason(tmp_path: Path, digits_paths: dict[str, Path], body: bytes,
                                                      headers: dict[str, str], code: int, message: str) -> None:
    settings = router_settings(tmp_path, router_max_body_bytes=4096)
    with running_app(settings, MemoryChannel(), digits_source(digits_paths)) as app:
        async def go() -> None:
            async with client(app) as c:
                answer = await c.post("/v2/models/digits/infer", content=body, headers=headers)
                assert answer.status_code == code
                assert message in answer.json()["error"]
                for other in ("/v2/models/cats/infer", "/v2/models/digits/versions/nope/infer"):
                    missing = await c.post(other, content=body)
                    assert missing.status_code in (403, 404) and "error" in missing.json()
        run(go())


def test_streamed_body_over_the_limit_is_413(tmp_path: Path, digits_paths: dict[str, Path]) -> None:
    settings = router_settings(tmp_path, router_max_body_bytes=4096)
    with running_app(settings, MemoryChannel(), digits_source(digits_paths)) as app:
        async def go() -> None:
            async def chunks():  # type: ignore[no-untyped-def]
                for _ in range(10):
                    yield b"x" * 1000

            async with client(app) as c:
                answer = await c.post("/v2/models/digits/infer", content=chunks())
                assert answer.status_code == 413 and "4096" in answer.json()["error"]
        run(go())


@pytest.mark.parametrize(("body", "message"), [
    (b"nope", "not valid JSON"), (b"[]", "empty"), (b"42", "object"),
    (orjson.dumps([{"request_id": "a", "label": 1}] * 1001), "at most 1000"),
])
def test_bad_feedback_bodies_get_400(tmp_path: Path, digits_paths: dict[str, Path], body: bytes,
                                     message: str) -> None:
    with running_app(router_settings(tmp_path), MemoryChannel(), digits_source(digits_paths)) as app:
        async def go() -> None:
            async with client(app) as c:
                answer = await c.post("/v1/feedback", content=body)
                assert answer.status_code == 400 and message in answer.json()["error"]
                assert (await c.get("/v1/feedback")).status_code == 405
        run(go())


def test_split_change_moves_traffic_and_keeps_keys_sticky(tmp_path: Path, digits_paths: dict[str, Path]) -> None:
    channel = MemoryChannel()
    rows, _ = digits_rows(1)
    with running_app(router_settings(tmp_path), channel, digits_source(digits_paths)) as app:
        async def served(c, key: str) -> str:  # type: ignore[no-untyped-def]
            answer = await c.post("/v2/models/digits/infer", content=infer_body(rows),
                                  headers={"x-modelroll-key": key})
            assert answer.status_code == 200
            return str(answer.headers["x-modelroll-variant"])

        async def go() -> None:
            async with client(app) as c:
                channel.publish_split(SplitConfig("digits", {"baseline": 75.0, "int8": 25.0}, rollout_id=3, step=3))
                from tests.router_fixtures import wait_for

                wait_for(lambda: app.table.routes["digits"].config is not None, 5, "split applied")
                first = {k: await served(c, k) for k in (f"user-{i}" for i in range(200))}
                assert 20 < sum(v == "int8" for v in first.values()) < 80
                again = {k: await served(c, k) for k in first}
                assert again == first
                channel.publish_split(SplitConfig("digits", {"baseline": 50.0, "int8": 50.0}, rollout_id=3, step=4))
                wait_for(lambda: app.table.routes["digits"].config.step == 4, 5, "second split")  # type: ignore[union-attr]
                later = {k: await served(c, k) for k in first}
                assert all(later[k] == "int8" for k, v in first.items() if v == "int8")
                metrics = (await c.get("/metrics")).text
                assert 'modelroll_variant_weight_pct{model="digits",variant="int8"} 50.0' in metrics
        run(go())


def test_samples_of_requests_answered_in_one_loop_pass_are_encoded_together(
        tmp_path: Path, digits_paths: dict[str, Path]) -> None:
    channel = MemoryChannel()
    with running_app(router_settings(tmp_path, router_flush_interval_s=30.0), channel,
                     digits_source(digits_paths)) as app:
        loop_thread = threading.get_ident()
        settle = app.recorder.settle
        loop_settles: list[int] = []

        def counting_settle() -> None:
            if threading.get_ident() == loop_thread:  # not the flusher thread's own call
                loop_settles.append(1)
            settle()

        app.recorder.settle = counting_settle  # type: ignore[method-assign]
        rows, _ = digits_rows(1)

        async def go() -> None:
            async with client(app) as c:
                answers = await asyncio.gather(*(c.post("/v2/models/digits/infer", content=infer_body(rows, f"r{i}"))
                                                 for i in range(8)))
                assert [a.status_code for a in answers] == [200] * 8
                await asyncio.sleep(0)
                settled = len(loop_settles)
                assert 1 <= settled < 8  # one pass of the loop settled several requests' samples
                one = await c.post("/v2/models/digits/infer", content=infer_body(rows, "alone"))
                assert one.status_code == 200
                await asyncio.sleep(0)
                assert len(loop_settles) == settled + 1  # alone: settled right after its answer

        run(go())
        counted = app.metrics.registry.get_sample_value(
            "modelroll_requests_total", {"model": "digits", "variant": "baseline", "code": "200"})
        assert counted == 9
        app.recorder.flush()
        ids = {s.request_id for s in SampleLog(channel).read() if s.kind == "request"}
        assert ids == {f"r{i}" for i in range(8)} | {"alone"}


def test_a_settle_left_on_a_closed_event_loop_does_not_stall_the_next(tmp_path: Path,
                                                                      digits_paths: dict[str, Path]) -> None:
    with running_app(router_settings(tmp_path, router_flush_interval_s=30.0), MemoryChannel(),
                     digits_source(digits_paths)) as app:
        dead = asyncio.new_event_loop()
        dead.close()
        app._settle_loop = dead  # a settle call was scheduled on a loop that closed before running it
        rows, _ = digits_rows(1)

        async def go() -> str:
            async with client(app) as c:
                assert (await c.post("/v2/models/digits/infer", content=infer_body(rows, "after"))).status_code == 200
                return (await c.get("/metrics")).text

        metrics = run(go())
        assert 'modelroll_requests_total{code="200",model="digits",variant="baseline"} 1.0' in metrics
        assert app.recorder.pending >= 1 and app._settle_loop is None


def test_every_answered_request_is_counted_with_its_code_under_bounded_labels(tmp_path: Path,
                                                                              digits_paths: dict[str, Path]) -> None:
    rows, _ = digits_rows(1)
    settings = router_settings(tmp_path, router_max_body_bytes=4096)
    with running_app(settings, MemoryChannel(), digits_source(digits_paths)) as app:
        async def go() -> None:
            async with client(app) as c:
                assert (await c.post("/v2/models/digits/infer", content=infer_body(rows))).status_code == 200
                assert (await c.post("/v2/models/digits/infer", content=b"{")).status_code == 400
                assert (await c.post("/v2/models/digits/infer", content=b"x" * 5000)).status_code == 413
                assert (await c.get("/v2/models/digits/infer")).status_code == 405
                assert (await c.get("/v2/models/digits")).status_code == 200
                for i in range(50):  # names the router does not serve: one label value between them
                    assert (await c.post(f"/v2/models/m{i}/infer", content=infer_body(rows))).status_code == 404
                    assert (await c.get(f"/v2/models/m{i}/ready")).status_code == 404
                assert (await c.get("/v3/nothing")).status_code == 404
                assert (await c.get("/v2/health/live")).status_code == 200
        run(go())
        app._observe_answered()

    def count(model: str, variant: str, code: int) -> float:
        value = app.metrics.registry.get_sample_value(
            "modelroll_requests_total", {"model": model, "variant": variant, "code": str(code)})
        return value or 0.0

    assert count("digits", "baseline", 200) == 1
    assert count("digits", "-", 400) == 1 and count("digits", "-", 413) == 1 and count("digits", "-", 405) == 1
    assert count("digits", "-", 200) == 1  # the metadata
    assert count("(unknown)", "-", 404) == 100
    assert count("-", "-", 404) == 1 and count("-", "-", 200) == 1
    models = {s.labels["model"] for m in app.metrics.registry.collect() if m.name == "modelroll_requests"
              for s in m.samples}
    assert models == {"digits", "(unknown)", "-"}
    refused = app.metrics.registry.get_sample_value("modelroll_request_duration_seconds_count",
                                                    {"model": "digits", "variant": "-"})
    assert refused == 3  # refused inference requests keep their duration beside the answered ones


@pytest.mark.parametrize(("method", "path", "code", "allow"), [
    ("POST", "/v2/models/digits/nothing", 404, None),  # exists for no method
    ("POST", "/v2/models/digits/versions/int8/nothing", 404, None),
    ("GET", "/v2/models/digits/versions", 404, None),
    ("GET", "/v2/models/digits/infer", 405, "POST"),
    ("PUT", "/v2/models/digits/versions/int8/infer", 405, "POST"),
    ("POST", "/v2/models/digits", 405, "GET"),
    ("DELETE", "/v2/models/digits/ready", 405, "GET"),
    ("POST", "/v2/health/live", 405, "GET"),
    ("POST", "/metrics", 405, "GET"),
    ("GET", "/v1/feedback", 405, "POST"),
    ("GET", "/v2/nothing", 404, None),
])
def test_a_path_that_exists_for_another_method_is_405_with_allow_and_else_404(
        tmp_path: Path, digits_paths: dict[str, Path], method: str, path: str, code: int, allow: str | None) -> None:
    with running_app(router_settings(tmp_path), MemoryChannel(), digits_source(digits_paths)) as app:
        async def go() -> None:
            async with client(app) as c:
                answer = await c.request(method, path)
                assert answer.status_code == code, answer.text
                assert answer.headers.get("allow") == allow
                error = answer.json()["error"]
                assert (f"use {allow}" in error) if allow else ("no endpoint" in error)
        run(go())


def test_a_bug_is_a_counted_json_500(tmp_path: Path, digits_paths: dict[str, Path],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("router.app.encode_response", broken)
    rows, _ = digits_rows(1)
    with running_app(router_settings(tmp_path), MemoryChannel(), digits_source(digits_paths)) as app:
        async def go() -> None:
            async with client(app) as c:
                answer = await c.post("/v2/models/digits/infer", content=infer_body(rows))
                assert answer.status_code == 500 and "internal error" in answer.json()["error"]
        run(go())
    assert app.metrics.registry.get_sample_value(
        "modelroll_requests_total", {"model": "digits", "variant": "-", "code": "500"}) == 1
