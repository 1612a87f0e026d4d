"""Bringing one's own model: an ONNX file whose weights sit beside it (torch's default export) is stored whole,
and with no recipe given the optimizer picks them for the kind of model and says why."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from modelroll.artifacts import ArtifactStore
from modelroll.catalog import store_onnx
from optimizer.model_kind import ModelKind, default_techniques


def _mlp(path: Path, external: bool) -> np.ndarray:
    weight = np.random.default_rng(0).normal(0, 1, (64, 256)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 256])],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save_model(model, str(path), save_as_external_data=external, location=f"{path.name}.data",
                    size_threshold=0)
    return weight


def test_an_onnx_file_with_external_weights_is_stored_as_one_whole_file(tmp_path: Path) -> None:
    weight = _mlp(tmp_path / "ext.onnx", external=True)
    assert (tmp_path / "ext.onnx.data").is_file()
    store = ArtifactStore(tmp_path / "store")
    stored = store_onnx(store, tmp_path / "ext.onnx")
    assert store_onnx(store, tmp_path / "ext.onnx").sha256 == stored.sha256  # the same model, the same artifact
    session = ort.InferenceSession(store.read_bytes(stored.sha256), providers=["CPUExecutionProvider"])
    x = np.ones((2, 64), np.float32)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], x @ weight, rtol=1e-5)
    _mlp(tmp_path / "inline.onnx", external=False)
    inline = store_onnx(store, tmp_path / "inline.onnx")  # a file without external data is stored as it is
    assert store.read_bytes(inline.sha256) == (tmp_path / "inline.onnx").read_bytes()


def test_default_techniques_follow_the_kind_of_model_and_the_runtimes_installed() -> None:
    cnn = ModelKind("cnn", "3 convolution(s): a convolutional network")
    recipes, why = default_techniques(cnn, has_torch=False, openvino=True)
    assert recipes == ("int8-static", "ov-int8") and "dynamic INT8 leaves convolutions in float" in why
    assert default_techniques(cnn, has_torch=False, openvino=False)[0] == ("int8-static",)
    encoder = ModelKind("transformer", "6 softmax(es)")
    assert default_techniques(encoder, has_torch=True, openvino=True)[0] == ("int8:per_channel", "ov-int8",
                                                                             "ov-weights")
    mlp = ModelKind("mlp", "5 matrix product(s)")
    assert default_techniques(mlp, has_torch=True, openvino=False)[0] == ("int8", "int8-static", "prune:0.5,int8")
