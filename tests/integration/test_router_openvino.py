"""OpenVINO variants in the router: served through the same runners as onnxruntime's (inline and subprocess),
their memory measured exactly by the subprocess runner, their artifact checked on every load, and refused with
what to do when the router cannot run what they were built with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelroll import runtimes
from modelroll.artifacts import ArtifactStore
from modelroll.errors import Unavailable
from modelroll.live.base import SplitConfig
from modelroll.live.memory import MemoryChannel
from router.runner_openvino import OpenVinoInlineRunner, OpenVinoSubprocessRunner
from router.runners import RunnerRefused
from router.variants import StaticVariantSource, VariantSpec, load_runner
from tests.loopback import wait_for
from tests.router_fixtures import (
    SampleLog,
    client,
    digits_paths,
    digits_rows,
    infer_body,
    router_settings,
    run,
    running_app,
)

__all__ = ["digits_paths"]  # fixture

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def ir_folder(tmp_path_factory: pytest.TempPathFactory, digits_paths: dict[str, Path]) -> Path:
    """The digits baseline converted to OpenVINO, computing in f32 (answers comparable with onnxruntime's)."""
    from optimizer.ov_quantize import build

    out = tmp_path_factory.mktemp("router-openvino") / "ir"
    return build("ov", {"precision": "f32", "cache": -1}, digits_paths["baseline"], (), out).folder


def _baseline_logits(path: Path, rows: np.ndarray) -> np.ndarray:
    from router.runners import InlineRunner

    runner = InlineRunner(path)
    return runner.run({"input": rows})[0]["logits"]


@pytest.mark.parametrize("runner_kind", ["inline", "subprocess"])
def test_an_openvino_variant_answers_like_its_onnx_source_through_either_runner(
        runner_kind: str, ir_folder: Path, digits_paths: dict[str, Path]) -> None:
    rows, _ = digits_rows(16)
    spec = VariantSpec("digits", "ov", path=ir_folder, format="openvino", runner=runner_kind,
                       built_with=runtimes.installed_version("openvino"))
    runner = load_runner(spec, "subprocess", 1)
    try:
        assert isinstance(runner, OpenVinoSubprocessRunner if runner_kind == "subprocess" else OpenVinoInlineRunner)
        assert [(t.name, t.datatype, t.shape) for t in runner.signature.inputs] == [("input", "FP32", (-1, 64))]
        outputs, cpu_ms, _ = runner.run({"input": rows})
        np.testing.assert_allclose(outputs["logits"], _baseline_logits(digits_paths["baseline"], rows),
                                   rtol=1e-4, atol=1e-4)
        assert cpu_ms > 0
        memory = runner.memory()
        if runner_kind == "subprocess":
            assert runner.measures_memory and memory is not None and 0 < memory[0] < memory[1]
        else:
            assert not runner.measures_memory and memory is None
    finally:
        runner.close()


def test_a_stored_openvino_artifact_loads_only_with_its_hash(tmp_path: Path, ir_folder: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    stored = store.put_file(ir_folder, "openvino")
    path = store.stored_path(stored.sha256)
    for kind in ("inline", "subprocess"):
        runner = load_runner(VariantSpec("digits", "ov", path=path, format="openvino", runner=kind,
                                         sha256=stored.sha256), "subprocess", 1)
        runner.close()
    path.chmod(0o644)
    damaged = bytearray(path.read_bytes())
    damaged[-2000] ^= 0xFF  # inside model.bin's padding or weights: the tar still opens
    path.write_bytes(bytes(damaged))
    for kind in ("inline", "subprocess"):
        with pytest.raises(RunnerRefused, match="artifact hash mismatch"):
            load_runner(VariantSpec("digits", "ov", path=path, format="openvino", runner=kind,
                                    sha256=stored.sha256), "subprocess", 1)


def test_a_router_without_openvino_refuses_the_variant_and_its_traffic_goes_to_the_baseline(
        tmp_path: Path, ir_folder: Path, digits_paths: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtimes, "installed_version", lambda runtime: None if runtime == "openvino" else "1.0")
    spec = VariantSpec("digits", "ov", "candidate", ir_folder, format="openvino", built_with="2026.4.1")
    with pytest.raises(Unavailable, match=r"variant 'ov' of model 'digits' runs on openvino \(built with openvino "
                                          r"2026\.4\.1\), and openvino is not installed here"):
        load_runner(spec, "inline", 1)
    channel = MemoryChannel()
    source = StaticVariantSource([VariantSpec("digits", "baseline", "baseline", digits_paths["baseline"]), spec])
    with running_app(router_settings(tmp_path), channel, source) as app:
        stored = channel.publish_split(SplitConfig("digits", {"baseline": 50.0, "ov": 50.0}, rollout_id=3, step=1))
        wait_for(lambda: (app.table.routes["digits"].config or stored).version == stored.version
                 and app.table.routes["digits"].config is not None, 10, "split applied")
        assert "openvino is not installed here" in app.table.routes["digits"].cannot_serve["ov"]

        async def go() -> None:
            async with client(app) as c:
                for i in range(10):
                    answer = await c.post("/v2/models/digits/infer", content=infer_body(digits_rows(1)[0]),
                                          headers={"x-modelroll-key": f"u{i}"})
                    assert answer.status_code == 200 and answer.headers["x-modelroll-variant"] == "baseline"
        run(go())


def test_the_subprocess_runner_reports_an_openvino_variants_memory_as_exact_samples(
        tmp_path: Path, ir_folder: Path, digits_paths: dict[str, Path]) -> None:
    channel = MemoryChannel()
    log = SampleLog(channel)
    source = StaticVariantSource([
        VariantSpec("digits", "baseline", "baseline", digits_paths["baseline"]),
        VariantSpec("digits", "ov", "candidate", ir_folder, format="openvino")])
    settings = router_settings(tmp_path, router_runner="subprocess", router_memory_interval_s=0.05)
    with running_app(settings, channel, source) as app:
        stored = channel.publish_split(SplitConfig("digits", {"baseline": 50.0, "ov": 50.0}, rollout_id=4, step=1))
        wait_for(lambda: (app.table.routes["digits"].config or stored).version == stored.version
                 and app.table.routes["digits"].config is not None, 30, "split applied")

        async def go() -> None:
            async with client(app) as c:
                for i in range(40):
                    answer = await c.post("/v2/models/digits/infer", content=infer_body(digits_rows(1)[0]),
                                          headers={"x-modelroll-key": f"u{i}"})
                    assert answer.status_code == 200, answer.text
        run(go())
        samples = log.wait(lambda s: {x.variant for x in s if x.kind == "memory"} >= {"baseline", "ov"}, 30)
    readings = [s for s in samples if s.kind == "memory" and s.variant == "ov"]
    assert readings and all(s.memory_exact and s.runner == "subprocess" and s.memory_bytes > 0 for s in readings)
    served = {s.variant for s in samples if s.kind == "request" and s.status == "ok"}
    assert served == {"baseline", "ov"}
