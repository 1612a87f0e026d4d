"""Each optimizer technique on small real models: the candidate really is smaller or quantized, quality measured."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper

from modelroll.errors import InvalidInput
from optimizer.distill import distill
from optimizer.export import export_onnx
from optimizer.layers import drop_layers
from optimizer.prune import prune
from optimizer.quantize import quantize_int8_dynamic, quantize_int8_static, weight_nodes
from optimizer.recipes import BAD_RECIPE, GOOD_RECIPE, build
from optimizer.smooth import smooth
from optimizer.sources import (
    DigitsMLP,
    DigitsModel,
    ModelSource,
    check_onnx,
    digits_calibration_inputs,
    digits_eval_set,
    digits_key,
    digits_model,
    onnx_source,
)
from optimizer.texts import text_corpus
from tests.unit.conftest import make_tiny_bert, tiny_text_feeds


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_accuracy(path: Path) -> float:
    inputs, labels = digits_eval_set()
    return float((session(path).run(None, {"input": inputs})[0].argmax(axis=1) == labels).mean())


def int8_weights(path: Path) -> dict[str, tuple[int, ...]]:
    model = onnx.load(str(path))
    return {t.name: tuple(t.dims) for t in model.graph.initializer
            if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2}


# ---- sources and export ----


def test_digits_model_is_accurate_cached_and_keyed_by_its_recipe(digits: DigitsModel, digits_cache: Path) -> None:
    assert digits.test_accuracy >= 0.95
    assert onnx_accuracy(digits.onnx_path) == pytest.approx(digits.test_accuracy, abs=1e-9)
    again = digits_model(digits_cache)  # loads, does not retrain: same file, same weights
    assert again.onnx_path == digits.onnx_path
    assert torch.equal(again.module.layers[1].weight, digits.module.layers[1].weight)
    assert digits_key((64, 32, 10)) != digits_key()
    x_test, _ = digits_eval_set()
    calibration = digits_calibration_inputs(100)
    assert not {row.tobytes() for row in calibration} & {row.tobytes() for row in x_test}


def test_digits_onnx_has_named_io_and_a_dynamic_batch(digits: DigitsModel) -> None:
    info = check_onnx(digits.onnx_path)
    assert info.inputs == ("input",) and info.outputs == ("logits",)
    run = session(digits.onnx_path)
    for batch in (1, 7):
        assert run.run(None, {"input": digits.eval_inputs[:batch]})[0].shape == (batch, 10)
    ops = {n.op_type for n in onnx.load(str(digits.onnx_path)).graph.node}
    assert "Gemm" not in ops and "MatMul" in ops  # rewritten so that dynamic INT8 can quantize it


def test_bad_models_are_refused_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        check_onnx(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\xffnot a protobuf at all" * 10)
    with pytest.raises(InvalidInput, match="not an ONNX model"):
        check_onnx(garbage)
    dangling = helper.make_graph([helper.make_node("Relu", ["nowhere"], ["y"])], "g", [],
                                 [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    broken = tmp_path / "broken.onnx"
    onnx.save(helper.make_model(dangling), str(broken))
    with pytest.raises(InvalidInput, match=r"fails onnx\.checker"):
        check_onnx(broken)


def test_text_set_is_deterministic_and_its_splits_are_disjoint() -> None:
    eval_texts, calibration = text_corpus(300, "eval"), text_corpus(200, "calibration")
    assert eval_texts == text_corpus(300, "eval")
    assert len(set(eval_texts)) == 300 and not set(eval_texts) & set(calibration)
    with pytest.raises(InvalidInput, match="unknown text split"):
        text_corpus(10, "train")


# ---- quantization ----


def test_dynamic_int8_stores_matmul_weights_as_int8_and_quarters_the_file(digits: DigitsModel, tmp_path: Path) -> None:
    result = quantize_int8_dynamic(digits.onnx_path, tmp_path / "q.onnx")
    assert result.quantized_nodes == 5 and result.excluded_nodes == ()
    shapes = sorted(int8_weights(result.output_path).values())
    assert shapes == sorted(layer.weight.T.shape for layer in digits.module.layers)
    assert result.size_bytes_after < 0.3 * result.size_bytes_before
    assert onnx_accuracy(result.output_path) >= digits.test_accuracy - 0.01


def test_dynamic_int8_per_channel_has_one_scale_per_output(digits: DigitsModel, tmp_path: Path) -> None:
    result = quantize_int8_dynamic(digits.onnx_path, tmp_path / "q.onnx", per_channel=True)
    scales = [numpy_helper.to_array(t) for t in onnx.load(str(result.output_path)).graph.initializer
              if t.name.endswith("w_scale")]
    assert sorted(s.size for s in scales) == sorted(layer.out_features for layer in digits.module.layers)


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_static_qdq_is_calibrated_with_each_method(digits: DigitsModel, tmp_path: Path, method: str) -> None:
    calibration = [{"input": digits_calibration_inputs(128)}]
    result = quantize_int8_static(digits.onnx_path, tmp_path / "q.onnx", calibration, method=method)
    ops = [n.op_type for n in onnx.load(str(result.output_path)).graph.node]
    assert ops.count("QuantizeLinear") >= 5 and ops.count("DequantizeLinear") >= 10
    assert result.quantized_nodes == 5 and result.calibration_method == method
    assert len(int8_weights(result.output_path)) == 5
    assert onnx_accuracy(result.output_path) >= digits.test_accuracy - 0.02


def test_excluded_nodes_stay_float_and_unknown_names_are_refused(digits: DigitsModel, tmp_path: Path) -> None:
    from optimizer.quantize import prepare

    prepared = prepare(digits.onnx_path, tmp_path / "prepared.onnx")
    first = weight_nodes(prepared)[0]
    result = quantize_int8_dynamic(prepared, tmp_path / "q.onnx", nodes_to_exclude=[first], pre_process=False)
    assert result.quantized_nodes == 4 and result.excluded_nodes == (first,)
    assert len(int8_weights(result.output_path)) == 4
    with pytest.raises(InvalidInput, match="unknown node"):
        quantize_int8_dynamic(prepared, tmp_path / "q2.onnx", nodes_to_exclude=["no-such-node"], pre_process=False)
    with pytest.raises(InvalidInput, match="calibration method"):
        quantize_int8_static(prepared, tmp_path / "q3.onnx", [{"input": digits.eval_inputs}], method="magic")


def test_smoothing_keeps_the_float_function_and_moves_scales_into_the_weights(
        digits: DigitsModel, digits_src: ModelSource, tmp_path: Path) -> None:
    result = smooth(digits.onnx_path, tmp_path / "s.onnx", digits_src.calibration, alpha=0.5)
    assert result.groups == 5 and result.matmuls == 5
    ops = [n.op_type for n in onnx.load(str(result.output_path)).graph.node]
    assert ops.count("Mul") == 5
    inputs = digits.eval_inputs
    np.testing.assert_allclose(session(result.output_path).run(None, {"input": inputs})[0],
                               session(digits.onnx_path).run(None, {"input": inputs})[0], rtol=1e-3, atol=1e-3)
    candidate = build("int8:smooth=0.5", digits_src, tmp_path / "c")
    assert len(int8_weights(candidate.model_path)) == 5
    assert onnx_accuracy(candidate.model_path) >= digits.test_accuracy - 0.01


# ---- structured pruning, distillation, layer dropping ----


def test_mlp_pruning_shrinks_every_hidden_layer_and_distillation_restores_accuracy(
        digits: DigitsModel, digits_src: ModelSource, tmp_path: Path) -> None:
    result = prune(digits.module, digits_src.calibration, amount=0.5)
    assert isinstance(result.model, DigitsMLP) and result.model.sizes == (64, 1024, 1024, 1024, 1024, 10)
    assert digits.module.sizes == (64, 2048, 2048, 2048, 2048, 10)  # the input model is untouched
    assert result.params_ratio < 0.26
    path = export_onnx(result.model, {"input": digits.eval_inputs[:2]}, tmp_path / "p.onnx", output_name="logits")
    assert path.stat().st_size < 0.3 * digits.onnx_path.stat().st_size
    pruned_accuracy = onnx_accuracy(path)
    assert digits.test_accuracy - 0.06 <= pruned_accuracy <= digits.test_accuracy
    tuned = distill(result.model, digits.module, digits_src.distill_feeds, steps=40)
    assert tuned.loss_after < tuned.loss_before / 10
    path = export_onnx(tuned.model, {"input": digits.eval_inputs[:2]}, tmp_path / "d.onnx", output_name="logits")
    assert onnx_accuracy(path) >= digits.test_accuracy - 0.01


def test_good_recipe_keeps_accuracy_and_bad_recipe_loses_several_points(
        digits: DigitsModel, digits_src: ModelSource, tmp_path: Path) -> None:
    good = build(GOOD_RECIPE.replace("distill", "distill:steps=40"), digits_src, tmp_path / "good")
    bad = build(BAD_RECIPE, digits_src, tmp_path / "bad")
    assert onnx_accuracy(good.model_path) >= digits.test_accuracy - 0.01
    assert onnx_accuracy(bad.model_path) <= digits.test_accuracy - 0.03
    for candidate in (good, bad):
        assert candidate.model_path.stat().st_size < 0.1 * digits.onnx_path.stat().st_size
        assert [r.step for r in candidate.records][-1] == "int8"


def test_encoder_pruning_removes_heads_and_ffn_neurons_physically(tmp_path: Path) -> None:
    encoder, feeds = make_tiny_bert(), tiny_text_feeds()
    result = prune(encoder, feeds, amount=0.5, heads=0.5)
    for layer in result.model.layers:
        assert layer.attention.self.query.out_features == 16 and layer.attention.output.dense.in_features == 16
        assert layer.intermediate.dense.out_features == 32 and layer.output.dense.in_features == 32
    assert encoder.layers[0].attention.self.query.out_features == 32
    path = export_onnx(result.model, feeds[0], tmp_path / "e.onnx", output_name="embedding")
    with torch.no_grad():
        expected = result.model(**{k: torch.from_numpy(v) for k, v in feeds[1].items()}).numpy()
    np.testing.assert_allclose(session(path).run(None, feeds[1])[0], expected, atol=1e-4)  # other seq/batch
    assert result.kept["layer.0.heads"] == 2 and result.kept["layer.0.ffn"] == 32
    shorter = {k: v[:, :8] for k, v in feeds[1].items()}
    with pytest.raises(InvalidInput, match="one shape"):
        quantize_int8_static(path, tmp_path / "q.onnx", [feeds[0], shorter], method="entropy")
    static = quantize_int8_static(path, tmp_path / "q.onnx", [feeds[0], shorter], method="minmax")
    assert static.quantized_nodes >= 6 * 4  # q, k, v, o, up, down of 4 layers (+ embedding gathers)
    tuned = distill(result.model, encoder, feeds, steps=30, lr=1e-3)
    assert tuned.steps == 30 and tuned.loss_after < 0.75 * tuned.loss_before


def test_layer_dropping_removes_the_least_sensitive_layer_first() -> None:
    encoder, feeds = make_tiny_bert(), tiny_text_feeds()
    with torch.no_grad():  # make layer 2 nearly a no-op: its two residual branches add ~nothing
        for dense in (encoder.layers[2].attention.output.dense, encoder.layers[2].output.dense):
            dense.weight.mul_(1e-3)
            dense.bias.zero_()
    result = drop_layers(encoder, feeds, max_fraction=0.5)
    assert result.dropped[0] == 2 and len(result.dropped) == 2 and result.layers_after == 2
    first_round = {p.layer: p.output_change for p in result.probes if p.round == 0}
    assert min(first_round, key=first_round.__getitem__) == 2 and len(first_round) == 4
    assert len(encoder.layers) == 4  # untouched
    limited = drop_layers(encoder, feeds, max_fraction=0.5, max_output_change=first_round[2] * 1.01)
    assert limited.dropped == (2,)


def test_layer_dropping_refuses_models_where_it_cannot_apply() -> None:
    with pytest.raises(InvalidInput, match="no droppable layer"):
        drop_layers(DigitsMLP((64, 32, 10)), [{"input": np.zeros((2, 64), np.float32)}])
    with pytest.raises(InvalidInput, match="less than one layer"):
        drop_layers(make_tiny_bert(), tiny_text_feeds(), max_fraction=0.1)


def test_torch_techniques_need_the_torch_model(digits: DigitsModel, tmp_path: Path) -> None:
    source = onnx_source(digits.onnx_path)
    with pytest.raises(InvalidInput, match="torch model"):
        build("prune:0.5,int8", source, tmp_path)
    with pytest.raises(InvalidInput, match="calibration"):
        build("int8-static", source, tmp_path)


@pytest.mark.slow
def test_minilm_is_exported_as_mean_pooled_embeddings_and_shrinks(tmp_path: Path) -> None:
    from optimizer.sources import encoder_source, minilm_dir

    source = encoder_source(minilm_dir(), tmp_path / "cache", calibration_texts=64, train_texts=64)
    info = check_onnx(source.onnx_path)
    assert info.inputs == ("input_ids", "attention_mask") and info.outputs == ("embedding",)
    feed = source.calibration[0]
    baseline = session(source.onnx_path).run(None, feed)[0]
    assert baseline.shape == (32, 384)
    assert source.torch_model is not None
    with torch.no_grad():
        expected = source.torch_model(**{k: torch.from_numpy(v) for k, v in feed.items()}).numpy()
    np.testing.assert_allclose(baseline, expected, atol=1e-4)
    candidate = build("drop-layers:0.34,prune:0.5:heads=0.25,int8:per_channel", source, tmp_path / "c")
    dropped = next(r for r in candidate.records if r.step.startswith("drop-layers")).detail["dropped"]
    assert len(dropped) == 2
    assert candidate.model_path.stat().st_size < 0.3 * source.onnx_path.stat().st_size
    out = session(candidate.model_path).run(None, feed)[0]
    cosine = (out * baseline).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(baseline, axis=1)
    assert 0.5 < float(cosine.mean()) < 0.9999  # measured: shrunk without distillation, still related


def test_quantizing_an_encoder_writes_nothing_into_the_working_directory(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # onnxruntime's symbolic shape inference dumps the model (+ a uuid1-named .data file of every weight)
    # into the cwd when it gives up on a BERT export; a user's folder must never collect those.
    out, cwd = tmp_path / "out", tmp_path / "cwd"
    out.mkdir()
    cwd.mkdir()
    encoder, feeds = make_tiny_bert(), tiny_text_feeds()
    path = export_onnx(encoder, feeds[0], out / "e.onnx", output_name="embedding")
    monkeypatch.chdir(cwd)
    quantize_int8_dynamic(path, out / "q.onnx")
    assert list(cwd.iterdir()) == []
    assert (out / "q.onnx").stat().st_size < path.stat().st_size
