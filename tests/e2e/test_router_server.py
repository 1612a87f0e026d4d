"""`modelroll router` as real processes: tritonclient (JSON, binary), one key one variant across routers, N workers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from modelroll.live import open_channel
from modelroll.live.base import SplitConfig
from modelroll.settings import Settings
from tests.router_fixtures import digits_paths, digits_rows, free_port, infer_body, wait_for

__all__ = ["digits_paths"]


@contextmanager
def router_process(tmp_path: Path, paths: dict[str, Path], redis_url: str, prefix: str,
                   workers: int = 1) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "MODELROLL_HOME": str(tmp_path / f"home-{port}"), "MODELROLL_REDIS_URL": redis_url,
           "MODELROLL_REDIS_PREFIX": prefix, "MODELROLL_ROUTER_FLUSH_INTERVAL_S": "0.05"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    args = [str(Path(sys.executable).parent / "modelroll"), "router", "--port", str(port), "--workers", str(workers)]
    for name, path in paths.items():
        args += ["--variant", f"digits/{name}={path}"]
    log_path = tmp_path / f"router-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT,
                                cwd=Path(__file__).resolve().parents[2])
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"router exited {proc.returncode}: {log_path.read_text()[-2000:]}")
        try:
            return httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, 90, "router process ready")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture()
def channel(redis_url: str, redis_prefix: str):  # type: ignore[no-untyped-def]
    live = open_channel(Settings(redis_url=redis_url, redis_prefix=redis_prefix))
    yield live
    live.close()


def test_tritonclient_json_and_binary_against_the_router_process(tmp_path: Path, digits_paths: dict[str, Path],
                                                                 redis_url: str, redis_prefix: str) -> None:
    import tritonclient.http as triton

    rows, _ = digits_rows(8)
    session = ort.InferenceSession(str(digits_paths["baseline"]), providers=["CPUExecutionProvider"])
    expected = session.run(["logits"], {"input": rows})[0]
    with router_process(tmp_path, {"baseline": digits_paths["baseline"]}, redis_url, redis_prefix) as url:
        client = triton.InferenceServerClient(url.removeprefix("http://"))
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("digits")
        meta = client.get_model_metadata("digits")
        assert meta["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 64]}
        for binary_in in (False, True):
            for binary_out in (False, True):
                tensor = triton.InferInput("input", list(rows.shape), "FP32")
                tensor.set_data_from_numpy(rows, binary_data=binary_in)
                wanted = triton.InferRequestedOutput("logits", binary_data=binary_out)
                result = client.infer("digits", [tensor], outputs=[wanted], request_id=f"tc-{binary_in}-{binary_out}")
                np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-5)
                assert result.get_response()["id"] == f"tc-{binary_in}-{binary_out}"
        tensor = triton.InferInput("input", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows)
        default = client.infer("digits", [tensor])  # no outputs: tritonclient asks for binary outputs
        np.testing.assert_allclose(default.as_numpy("logits"), expected, rtol=1e-5)
        bad = triton.InferInput("input", [1, 32], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 32), np.float32))
        with pytest.raises(triton.InferenceServerException, match="does not match"):
            client.infer("digits", [bad])
        client.close()


def test_same_key_same_variant_in_two_router_processes_and_metrics_of_two_workers(
        tmp_path: Path, digits_paths: dict[str, Path], redis_url: str, redis_prefix: str, channel) -> None:  # type: ignore[no-untyped-def]
    channel.publish_split(SplitConfig("digits", {"baseline": 50.0, "int8": 50.0}, rollout_id=1, step=4))
    rows, _ = digits_rows(1)
    paths = {"baseline": digits_paths["baseline"], "int8": digits_paths["int8"]}
    with router_process(tmp_path, paths, redis_url, redis_prefix) as a, \
            router_process(tmp_path, paths, redis_url, redis_prefix, workers=2) as b, \
            httpx.Client(timeout=10) as http:
        body = infer_body(rows)

        def variant(url: str, key: str) -> str:
            answer = http.post(f"{url}/v2/models/digits/infer", content=body, headers={"x-modelroll-key": key})
            assert answer.status_code == 200
            return str(answer.headers["x-modelroll-variant"])

        keys = [f"customer-{i}" for i in range(150)]
        on_a = {k: variant(a, k) for k in keys}
        on_b = {k: variant(b, k) for k in keys}
        assert on_a == on_b
        assert 40 < sum(v == "int8" for v in on_a.values()) < 110
        # b runs two workers: its /metrics adds both up (prometheus multiprocess mode).
        text = http.get(f"{b}/metrics").text
        answered = r'modelroll_requests_total\{code="200",model="digits",variant="[^"-][^"]*"\} ([0-9.e+]+)'
        total = sum(float(m) for m in re.findall(answered, text))  # inferences only: readiness polls count too
        assert total == len(keys)
