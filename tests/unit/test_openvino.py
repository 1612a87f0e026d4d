"""OpenVINO candidates: recipes that name the runtime, the IR folder as one artifact with its manifest, the
embedding table kept INT8, model kinds, and each OpenVINO technique built and measured by the one evaluator."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelroll import openvino_ir, runtimes
from modelroll.artifacts import ArtifactStore
from modelroll.errors import InvalidInput, Unavailable
from modelroll.figures import Figures
from modelroll.recipes import parse_recipe
from modelroll.report_table import share_note, table_lines
from optimizer.build import build
from optimizer.evaluate import EvalConfig, EvalSet, evaluate, runtime_meta
from optimizer.model_kind import model_kind
from optimizer.recipes import search
from optimizer.sources import DigitsModel, ModelSource

FAST = EvalConfig(batch_sizes=(1, 8), warmup_runs=2, min_runs=5, max_runs=20, max_time_s=0.3)


# ---- recipes and runtimes ----

def test_a_recipe_names_the_runtime_its_final_step_is_built_for() -> None:
    assert parse_recipe("int8").runtime == "onnxruntime"
    assert parse_recipe("prune:0.5,distill").runtime == "onnxruntime"
    recipe = parse_recipe("prune:0.5,distill,ov-int8:kind=cnn:precision=f32:cache=0")
    assert recipe.runtime == "openvino"
    assert recipe.quantization is not None and recipe.quantization.options["precision"] == "f32"
    assert str(parse_recipe("openvino:bf16")) == "ov:precision=bf16"
    assert parse_recipe("ov-weights:int4_sym:ratio=0.8").steps[0].options == {
        "mode": "int4_sym", "ratio": 0.8, "group": 128, "dq": -1, "precision": "default", "cache": -1}


@pytest.mark.parametrize(("text", "message"), [
    ("int8,ov-int8", "quantizes twice: keep one of int8 / int8-static / ov / ov-int8 / ov-weights"),
    ("ov-int8,prune", "prune must come before the quantization step"),
    ("ov-int8:precision=int2", r"precision='int2' is not accepted: precision is one of \['default', 'bf16'"),
    ("ov-weights:mode=int3", "mode='int3' is not accepted"),
])
def test_bad_openvino_recipes_are_refused_with_what_is_accepted(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_recipe(text)


def test_a_runtime_that_is_not_installed_or_too_old_is_refused_with_what_to_do(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtimes, "installed_version", lambda runtime: None)
    with pytest.raises(Unavailable, match=r"variant 'v' of model 'm' runs on openvino \(built with openvino "
                                          r"2026.4.1\), and openvino is not installed here: pip install"):
        runtimes.require("openvino", "2026.4.1", what="variant 'v' of model 'm'")
    monkeypatch.setattr(runtimes, "installed_version", lambda runtime: "2025.1.0")
    with pytest.raises(Unavailable, match=r"built with openvino 2026\.4\.1, newer than the 2025\.1\.0 installed here"):
        runtimes.require("openvino", "2026.4.1")
    assert runtimes.require("openvino", "2024.6.0") == "2025.1.0"  # a newer runtime reads an older IR
    with pytest.raises(Unavailable, match="format 'tflite' cannot be served"):
        runtimes.require("tflite")


# ---- the IR folder as one artifact ----

def _ir_folder(path: Path, weights: bytes = b"\x01\x02" * 1000) -> Path:
    path.mkdir(parents=True)
    (path / openvino_ir.XML).write_text("<net/>")
    (path / openvino_ir.BIN).write_bytes(weights)
    openvino_ir.write_manifest(path, openvino_ir.IrManifest("2026.4.1", {"INFERENCE_PRECISION_HINT": "f32"},
                                                            {"nncf": "3.4.0"}, "ov-int8"))
    return path


def test_an_ir_folder_is_stored_as_one_artifact_and_read_back_in_memory(tmp_path: Path) -> None:
    folder = _ir_folder(tmp_path / "ir")
    store = ArtifactStore(tmp_path / "store")
    stored = store.put_file(folder, "openvino")
    assert store.put_file(folder, "openvino").sha256 == stored.sha256  # the same pair, the same hash
    xml, weights, manifest = openvino_ir.members(bytearray(store.read_bytes(stored.sha256)))
    assert xml == b"<net/>" and bytes(weights) == (folder / openvino_ir.BIN).read_bytes()
    assert manifest == openvino_ir.read_manifest(folder)
    assert manifest.config == {"INFERENCE_PRECISION_HINT": "f32"} and manifest.built_with == {"nncf": "3.4.0"}
    (folder / openvino_ir.BIN).write_bytes(b"\x00")  # one file of the pair changed: another artifact
    assert store.put_file(folder, "openvino").sha256 != stored.sha256
    assert openvino_ir.compile_config(manifest.config, 2)["INFERENCE_NUM_THREADS"] == "2"


def test_a_folder_without_the_pair_and_manifest_is_not_an_openvino_artifact(tmp_path: Path) -> None:
    folder = _ir_folder(tmp_path / "ir")
    (folder / openvino_ir.MANIFEST).unlink()
    with pytest.raises(InvalidInput, match=r"needs model\.xml, model\.bin and modelroll\.json"):
        openvino_ir.read_manifest(folder)
    store = ArtifactStore(tmp_path / "store")
    data = store.read_bytes(store.put_file(folder, "openvino").sha256)
    with pytest.raises(InvalidInput, match=r"has no modelroll\.json"):
        openvino_ir.members(data)


# ---- graph rewrites and model kinds ----

def test_an_embedding_table_stays_int8_and_the_rows_read_are_the_same_numbers() -> None:
    import openvino as ov
    from openvino import opset13 as ops

    from optimizer.ov_graph import quantize_embeddings, quantize_rows

    table = np.random.default_rng(0).normal(0, 0.05, (1000, 64)).astype(np.float32)
    ids = ops.parameter([-1, -1], np.int64, name="ids")
    model = ov.Model([ops.gather(ops.constant(table), ids, ops.constant(np.int64(0)))], [ids])
    [done] = quantize_embeddings(model)
    assert done.shape == (1000, 64) and done.bytes_after < 0.3 * done.bytes_before
    constants = [n for n in model.get_ops() if n.get_type_name() == "Constant"]
    assert not any(n.get_output_element_type(0) == ov.Type.f32 and n.get_output_shape(0) == [1000, 64]
                   for n in constants), "the float table is gone"
    rows = np.array([[3, 999, 0], [7, 7, 500]], np.int64)
    out = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(rows)[0]
    q, scale, zero = quantize_rows(table)
    expected = ((q.astype(np.float32) - zero) * scale)[rows]
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)
    assert np.abs(out - table[rows]).max() <= scale.max()  # within one step of the float table


def _save(path: Path, nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
          initializers: list[np.ndarray], names: list[str]) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(a, n) for a, n in zip(initializers, names, strict=True)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_the_kind_of_model_is_read_from_its_operators(tmp_path: Path, digits: DigitsModel) -> None:
    assert model_kind(digits.onnx_path).kind == "mlp"
    image = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])
    conv = _save(tmp_path / "cnn.onnx", [helper.make_node("Conv", ["x", "w"], ["y"])], [image],
                 [np.ones((4, 1, 3, 3), np.float32)], ["w"])
    assert model_kind(conv).kind == "cnn"
    tokens = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])
    nodes = [helper.make_node("LayerNormalization", ["x", "g"], ["n"])]
    for name in ("q", "k", "v", "o"):
        nodes.append(helper.make_node("MatMul", ["n", name], [f"{name}_out"]))
    nodes += [helper.make_node("Softmax", ["q_out"], ["p"]), helper.make_node("Add", ["p", "o_out"], ["y"])]
    attention = _save(tmp_path / "enc.onnx", nodes, [tokens], [np.ones(8, np.float32)] +
                      [np.eye(8, dtype=np.float32)] * 4, ["g", "q", "k", "v", "o"])
    assert model_kind(attention).kind == "transformer"


# ---- each technique, built and measured by the one evaluator ----

@pytest.fixture(scope="module")
def eval_set(tmp_path_factory: pytest.TempPathFactory, digits: DigitsModel) -> EvalSet:
    path = tmp_path_factory.mktemp("eval") / "eval.npz"
    np.savez(path, input=digits.eval_inputs[:200], labels=digits.eval_labels[:200])
    return EvalSet.load(path)


@pytest.fixture(scope="module")
def reference(digits: DigitsModel, eval_set: EvalSet) -> Figures:
    measured = evaluate(digits.onnx_path, eval_set, FAST)
    assert measured.ok and measured.figures is not None
    return measured.figures


def test_ov_int8_quantizes_weights_and_activations_and_keeps_accuracy(
        tmp_path: Path, digits_src: ModelSource, eval_set: EvalSet, reference: Figures) -> None:
    candidate = build("ov-int8:precision=f32", digits_src, tmp_path / "c")
    folder = candidate.model_path
    assert openvino_ir.is_ir_folder(folder)
    detail = candidate.records[-1].detail
    assert detail["kind"] == "mlp" and detail["quantized_nodes"] >= 5 and detail["compressed_weights"] >= 5
    assert detail["settings"] == {"INFERENCE_PRECISION_HINT": "f32"}
    assert detail["size_bytes_after"] < 0.3 * detail["size_bytes_before"]
    meta = runtime_meta(folder)
    assert meta == {"runtime": "openvino", "runtime_version": runtimes.installed_version("openvino"),
                    "runtime_settings": {"INFERENCE_PRECISION_HINT": "f32"}}
    measured = evaluate(folder, eval_set, FAST)
    assert measured.ok and measured.figures is not None and measured.figures.quality is not None, measured.error
    figures = measured.figures
    assert figures.runtime_label == f"openvino {meta['runtime_version']} (INFERENCE_PRECISION_HINT=f32)"
    assert figures.size_bytes == openvino_ir.size_bytes(folder) and figures.batch_sizes == (1, 8)
    assert reference.quality is not None
    assert figures.quality.value >= reference.quality.value - 0.01
    lines = {line.metric: line for line in table_lines(reference, figures, ())}
    assert lines["runtime"].original.startswith("onnxruntime ") and lines["runtime"].improvement == "runtime changed"
    assert lines["runtime memory before load"].improvement == "each runtime's fixed cost, not the model's"


def test_ov_weights_compresses_the_weights_only(tmp_path: Path, digits_src: ModelSource, eval_set: EvalSet,
                                                 reference: Figures) -> None:
    # Through the back-off search, as the worker builds it: a step with no node to keep in float is tried once.
    found = search("ov-weights:cache=0", digits_src, tmp_path / "w", lambda path: 0.0, baseline_quality=1.0,
                   max_tries=3)
    assert [t.recipe for t in found.tries] == ["ov-weights:cache=0"] and found.best is None
    candidate = found.tries[0]
    detail = candidate.records[-1].detail
    assert detail["quantized_nodes"] == 0 and detail["compressed_weights"] >= 5
    measured = evaluate(candidate.model_path, eval_set, FAST, reference=None)
    assert measured.ok and measured.figures is not None and measured.figures.quality is not None
    assert reference.quality is not None and measured.figures.quality.value >= reference.quality.value - 0.01


def test_an_openvino_step_needs_calibration_for_int8(tmp_path: Path, digits_src: ModelSource) -> None:
    with pytest.raises(InvalidInput, match="ov-int8 needs calibration batches"):
        build("ov-int8", replace(digits_src, calibration=()), tmp_path / "x")


def test_the_cpu_share_note_names_the_side_it_is_about() -> None:
    assert share_note(0.95, 1.01) == ""
    assert share_note(0.7, 1.0) == "original below 90%: a busy machine inflated its latency"
    assert share_note(0.95, 1.4) == "optimized above 100%: the runtime used more threads than the ones set"
    assert share_note(0.5, 0.6).startswith("original and optimized below 90%: a busy machine inflated their")


def test_an_openvino_recipe_on_a_worker_without_nncf_fails_saying_what_to_install(
        tmp_path: Path, digits_src: ModelSource, monkeypatch: pytest.MonkeyPatch) -> None:
    import optimizer.build

    monkeypatch.setattr(optimizer.build, "installed_version", lambda package: None if package == "nncf" else "1")
    with pytest.raises(InvalidInput, match=r"builds an OpenVINO candidate with nncf, which is not installed in this "
                                           r"worker: pip install"):
        build("ov-int8", digits_src, tmp_path / "x")
