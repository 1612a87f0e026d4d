"""Every answer of the router is valid V2: no `null` for a number, whatever the input or the variant."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import orjson
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelroll.live.base import SplitConfig
from modelroll.live.memory import MemoryChannel
from router.variants import VariantSpec
from tests.loopback import wait_for
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
)

__all__ = ["digits_paths"]  # fixtures

URL = "/v2/models/digits/infer"


def _binary(rows: np.ndarray, binary_output: bool) -> tuple[bytes, dict[str, str]]:
    blob = rows.astype(np.float32).tobytes()
    header = orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(rows.shape),
                                       "parameters": {"binary_data_size": len(blob)}}],
                           "parameters": {"binary_data_output": binary_output}})
    return header + blob, {"Inference-Header-Content-Length": str(len(header))}


def _json(data: list[object]) -> bytes:
    return orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": data}]})


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Digits-shaped ([N, 64] -> [N, 10]) with a NaN bias on one class: NaN for every input, like a broken build."""
    bias = np.zeros(10, np.float32)
    bias[3] = np.nan
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["z"]), helper.make_node("Add", ["z", "b"], ["logits"])],
        "nan_digits", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 10])],
        initializer=[numpy_helper.from_array(np.full((64, 10), 0.01, np.float32), "w"),
                     numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("nan-model") / "nan.onnx"
    onnx.save(model, str(path))
    return path


def test_results_holding_nan_or_inf_are_a_400_never_null(tmp_path: Path, digits_paths: dict[str, Path]) -> None:
    rows, _ = digits_rows(2)
    with running_app(router_settings(tmp_path), MemoryChannel(), digits_source(digits_paths)) as app:
        async def go() -> None:
            async with client(app) as c:
                ok = await c.post(URL, content=infer_body(rows))
                assert ok.status_code == 200 and b"null" not in ok.content
                # 3e38 is an FP32 value, but the model's sums overflow: the baseline's NaN is the input's doing
                huge = await c.post(URL, content=infer_body(np.full((2, 64), 3e38, np.float32)))
                assert huge.status_code == 400, huge.text
                error = huge.json()["error"]
                assert "answered NaN or ±Inf in output 'logits'" in error and "FP32: ±3.4e38" in error
                for value in (np.nan, np.inf):  # binary tensors can carry NaN and Inf in; no answer carries them out
                    for binary_output in (False, True):
                        body, headers = _binary(np.full((1, 64), value, np.float32), binary_output)
                        answer = await c.post(URL, content=body, headers=headers)
                        assert answer.status_code == 400, (value, binary_output, answer.content[:200])
                        assert "NaN or ±Inf" in answer.json()["error"]
        run(go())
        app._observe_answered()
    assert app.metrics.registry.get_sample_value(
        "modelroll_requests_total", {"model": "digits", "variant": "-", "code": "400"}) == 5


@pytest.mark.parametrize(("data", "message"), [
    ([0.5] * 63 + [1e39], "values must fit FP32 [-3.4028235e+38, 3.4028235e+38], got 1e+39"),
    ([-1e39] * 64, "got -1e+39"),
    ([[0.5] * 63 + [1e39]], "got 1e+39"),  # nested data takes the general path
    ([0.5] * 63 + [True], "FP32 data must be numbers, got true/false"),
    ([True] * 64, "got true/false"),
    ([[False] + [0.5] * 63], "got true/false"),
])
def test_json_values_an_fp32_input_cannot_take_are_a_400(tmp_path: Path, digits_paths: dict[str, Path],
                                                         data: list[object], message: str) -> None:
    with running_app(router_settings(tmp_path), MemoryChannel(), digits_source(digits_paths)) as app:
        async def go() -> None:
            async with client(app) as c:
                answer = await c.post(URL, content=_json(data))
                assert answer.status_code == 400, answer.text
                assert message in answer.json()["error"]
        run(go())


def test_a_candidate_answering_nan_falls_back_to_the_baseline_and_counts_as_its_error(
        tmp_path: Path, digits_paths: dict[str, Path], nan_model: Path) -> None:
    channel = MemoryChannel()
    log = SampleLog(channel)
    rows, _ = digits_rows(1)
    source = digits_source({"baseline": digits_paths["baseline"]}, nan=VariantSpec("digits", "nan", "candidate",
                                                                                   nan_model))
    with running_app(router_settings(tmp_path), channel, source) as app:
        stored = channel.publish_split(SplitConfig("digits", {"baseline": 0.0, "nan": 100.0}, rollout_id=7, step=1))
        wait_for(lambda: (app.table.routes["digits"].config or stored).version == stored.version
                 and app.table.routes["digits"].config is not None, 10, "split applied")

        async def go() -> None:
            async with client(app) as c:
                for i in range(3):
                    answer = await c.post(URL, content=infer_body(rows, f"r{i}"))
                    assert answer.status_code == 200 and answer.headers["x-modelroll-variant"] == "baseline"
                    assert b"null" not in answer.content
        run(go())
        metrics = app.metrics.registry
        assert metrics.get_sample_value("modelroll_request_errors_total",
                                        {"model": "digits", "variant": "nan", "status": "error"}) == 3
        assert metrics.get_sample_value("modelroll_fallbacks_total",
                                        {"model": "digits", "variant": "nan", "reason": "error"}) == 3
        app.recorder.flush()
        samples = log.wait(lambda s: sum(x.kind == "request" and x.variant == "nan" for x in s) == 3)
        assert {s.status for s in samples if s.kind == "request" and s.variant == "nan"} == {"error"}
