"""Optimization requests are checked at the edge: techniques, gates, batch sizes, eval data against the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelroll.errors import InvalidInput
from modelroll.jobs import OptimizationRequest, check_eval_data
from modelroll.types import Criteria
from optimizer.cli import parse_gates


def test_recipes_are_read_step_by_step_with_aliases() -> None:
    request = OptimizationRequest(model="digits", techniques=("int8", "drop:0.3,int8", " prune:0.5,distill,int8 "))
    assert request.needs_torch == ("drop:0.3,int8", "prune:0.5,distill,int8")
    assert request.techniques[2] == "prune:0.5,distill,int8"


@pytest.mark.parametrize("techniques, message", [
    (("fp16",), "unknown technique 'fp16'"),
    (("int8,quantum",), "unknown technique 'quantum'"),
    ((), "techniques must be a list of 1 to 16"),
    ("int8", "techniques must be a list"),
    (("int8", "int8"), "duplicates"),
    (("",), "non-empty string"),
    (("prune:1.5",), r"prune: amount='1.5' is not accepted: amount is float in \[0, 1\)"),
    (("int8:bogus",), "int8: per_channel='bogus' is not accepted: per_channel is true or false"),
    (("int8,prune:0.5",), "prune must come before the quantization step"),
    ((7,), "a recipe must be text"),
])
def test_bad_techniques_are_refused_with_what_is_accepted(techniques: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as info:
        OptimizationRequest(model="digits", techniques=techniques)  # type: ignore[arg-type]
    if "unknown" in message:
        assert "accepted" in info.value.message and "int8-static" in info.value.message


@pytest.mark.parametrize("body, message", [
    ({"model": "digits", "criteria": {"latency_reduction_min": 1.5}}, r"latency_reduction_min must be in \[0.0, 1.0\)"),
    ({"model": "digits", "criteria": {"accuracy_drop_max": -0.1}}, r"accuracy_drop_max must be in \[0.0, 1.0\]"),
    ({"model": "digits", "criteria": {"speed": 2}}, "unknown criteria field"),
    ({"model": "digits", "colour": "red"}, "unknown optimization field"),
    ({"techniques": ["int8"]}, "needs 'model'"),
    ({"model": "Digits!"}, "not a valid name"),
    ({"model": "digits", "batch_sizes": [0]}, r"integers in \[1, 1024\]"),
    ({"model": "digits", "batch_sizes": "1,32"}, "batch_sizes must be a list"),
    ({"model": "digits", "threads": 0}, r"threads must be an integer in \[1, 64\]"),
    ({"model": "digits", "eval_data": "eval.csv"}, "an .npz file"),
    ({"model": "digits", "eval_sha256": "abc"}, "not a sha256"),
    ([1, 2], "must be an object"),
])
def test_bad_request_bodies_say_what_was_wrong(body: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        OptimizationRequest.from_dict(body)


def test_request_round_trips_through_its_json_form() -> None:
    request = OptimizationRequest(model="digits", techniques=("int8", "prune:0.5,int8"),
                                  criteria=Criteria(latency_reduction_min=0.3), batch_sizes=(32, 1))
    assert request.batch_sizes == (1, 32)
    assert OptimizationRequest.from_dict(request.to_dict()) == request


@pytest.mark.parametrize("text, message", [
    ("latency=1.5", r"latency_reduction_min must be in \[0.0, 1.0\)"),
    ("memory=-1", r"memory_reduction_min must be in"),
    ("speed=0.5", "cannot read 'speed=0.5'"),
    ("latency", "cannot read 'latency'"),
    ("accuracy=two", "is not a number"),
])
def test_gates_outside_their_range_are_refused(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_gates(text)


def test_gates_accept_short_and_full_names() -> None:
    assert parse_gates("latency=0.3, accuracy_drop_max=0.01") == Criteria(latency_reduction_min=0.3,
                                                                          accuracy_drop_max=0.01)


@pytest.fixture()
def encoder_onnx(tmp_path: Path) -> Path:
    """A model with two int64 inputs [batch, seq] and a float output, like a tokenized encoder."""
    table = numpy_helper.from_array(np.zeros((100, 8), np.float32), "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["emb"]),
         helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
         helper.make_node("Unsqueeze", ["maskf", "axes"], ["mask3"]),
         helper.make_node("Mul", ["emb", "mask3"], ["masked"]),
         helper.make_node("ReduceMean", ["masked", "seq_axis"], ["embedding"], keepdims=0)],
        "enc",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 8])],
        [table, numpy_helper.from_array(np.array([2], np.int64), "axes"),
         numpy_helper.from_array(np.array([1], np.int64), "seq_axis")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp_path / "enc.onnx"))
    return tmp_path / "enc.onnx"


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def test_matching_eval_data_is_accepted(tmp_path: Path, encoder_onnx: Path) -> None:
    ids = np.ones((10, 12), np.int64)
    assert check_eval_data(_npz(tmp_path / "ok.npz", input_ids=ids, attention_mask=ids), encoder_onnx) == 10


@pytest.mark.parametrize("arrays, message", [
    ({"input_ids": np.ones((4, 6), np.int64)}, "no array 'attention_mask'"),
    ({"input_ids": np.ones((4, 6, 1), np.int64), "attention_mask": np.ones((4, 6), np.int64)},
     r"'input_ids' has shape \[4, 6, 1\]; the model expects \['\?', '\?'\]"),
    ({"input_ids": np.ones((4, 6), np.float32), "attention_mask": np.ones((4, 6), np.int64)},
     "'input_ids' has dtype float32; the model expects int64"),
    ({"input_ids": np.ones((4, 6), np.int64), "attention_mask": np.ones((5, 6), np.int64)}, "same, non-zero number"),
    ({"input_ids": np.ones((4, 6), np.int64), "attention_mask": np.ones((4, 6), np.int64),
      "labels": np.ones(3)}, "same, non-zero number"),
])
def test_eval_data_not_matching_the_models_inputs_names_the_input(tmp_path: Path, encoder_onnx: Path,
                                                                  arrays: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        check_eval_data(_npz(tmp_path / "bad.npz", **arrays), encoder_onnx)


def test_fixed_feature_dims_are_checked(tmp_path: Path) -> None:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "relu.onnx"))
    with pytest.raises(InvalidInput, match=r"'x' has shape \[3, 63\]; the model expects \['\?', 64\]"):
        check_eval_data(_npz(tmp_path / "e.npz", x=np.zeros((3, 63), np.float32)), tmp_path / "relu.onnx")


def test_eval_data_that_is_missing_or_not_npz_is_refused(tmp_path: Path, encoder_onnx: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        check_eval_data(tmp_path / "nope.npz", encoder_onnx)
    (tmp_path / "text.npz").write_text("a,b\n1,2\n")
    with pytest.raises(InvalidInput, match=r"not a readable \.npz"):
        check_eval_data(tmp_path / "text.npz", encoder_onnx)
