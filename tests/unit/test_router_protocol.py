"""The V2 codec: every datatype in JSON and binary, and every kind of bad tensor refused with a clear 400."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from modelroll.errors import InvalidInput
from router.protocol import decode_request, encode_response, serialize_bytes
from router.runner_http import decode_response
from router.tensors import DATATYPES, Signature, TensorSpec

TYPES = ["BOOL", "UINT8", "INT8", "INT32", "INT64", "FP16", "FP32", "FP64"]
SIG = Signature(
    (*tuple(TensorSpec(f"in_{t.lower()}", t, (-1, 3)) for t in TYPES), TensorSpec("in_bytes", "BYTES", (-1,))),
    (*tuple(TensorSpec(f"out_{t.lower()}", t, (-1, 3)) for t in TYPES), TensorSpec("out_bytes", "BYTES", (-1,))),
)
DIGITS = Signature((TensorSpec("input", "FP32", (-1, 64)),), (TensorSpec("logits", "FP32", (-1, 10)),))


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out: dict[str, np.ndarray] = {}
    for t in TYPES:
        dtype = SIG.input_by_name[f"in_{t.lower()}"].dtype
        if t == "BOOL":
            out[f"in_{t.lower()}"] = rng.integers(0, 2, (2, 3)).astype(bool)
        elif dtype.kind in "iu":
            info = np.iinfo(dtype)
            out[f"in_{t.lower()}"] = rng.integers(max(info.min, -100), min(info.max, 100), (2, 3)).astype(dtype)
        else:
            out[f"in_{t.lower()}"] = rng.normal(size=(2, 3)).astype(dtype)
    out["in_bytes"] = np.array([b"hello", "wörld".encode()], dtype=object)
    return out


def _json_body(arrays: dict[str, np.ndarray]) -> bytes:
    inputs = []
    for name, arr in arrays.items():
        spec = SIG.input_by_name[name]
        data = [x.decode() for x in arr] if spec.datatype == "BYTES" else arr.tolist()
        inputs.append({"name": name, "datatype": spec.datatype, "shape": list(arr.shape), "data": data})
    return orjson.dumps({"id": "r1", "inputs": inputs})


def _binary_body(arrays: dict[str, np.ndarray]) -> tuple[bytes, int]:
    inputs, blobs = [], []
    for name, arr in arrays.items():
        spec = SIG.input_by_name[name]
        blob = serialize_bytes(arr) if spec.datatype == "BYTES" else arr.tobytes()
        inputs.append({"name": name, "datatype": spec.datatype, "shape": list(arr.shape),
                       "parameters": {"binary_data_size": len(blob)}})
        blobs.append(blob)
    header = orjson.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}})
    return header + b"".join(blobs), len(header)


def _outputs_of(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name.replace("in_", "out_"): arr for name, arr in arrays.items()}


def test_every_datatype_round_trips_through_json() -> None:
    arrays = _arrays()
    request = decode_request(_json_body(arrays), None, SIG)
    assert request.id == "r1" and request.batch_size == 2
    for name, arr in arrays.items():
        got = request.inputs[name]
        assert got.dtype == SIG.input_by_name[name].dtype
        np.testing.assert_array_equal(got, arr)
    body, header_len = encode_response("m", "baseline", "r1", _outputs_of(request.inputs), request)
    assert header_len is None
    decoded = decode_response(body, None)
    for name, arr in arrays.items():
        np.testing.assert_array_equal(decoded[name.replace("in_", "out_")], arr)


def test_every_datatype_round_trips_through_binary_tensors() -> None:
    arrays = _arrays()
    body, header_len = _binary_body(arrays)
    request = decode_request(body, header_len, SIG)
    for name, arr in arrays.items():
        np.testing.assert_array_equal(request.inputs[name], arr)
    out, out_header_len = encode_response("m", "baseline", "r", _outputs_of(request.inputs), request)
    assert out_header_len is not None
    head = orjson.loads(out[:out_header_len])
    assert all("binary_data_size" in o["parameters"] for o in head["outputs"])
    decoded = decode_response(out, out_header_len)
    for name, arr in arrays.items():
        np.testing.assert_array_equal(decoded[name.replace("in_", "out_")], arr)


def test_requested_outputs_pick_names_and_encoding() -> None:
    body = orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}],
                         "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]})
    request = decode_request(body, None, DIGITS)
    out, header_len = encode_response("d", "b", "x", {"logits": np.arange(10, dtype=np.float32)[None]}, request)
    assert header_len is not None and len(out) - header_len == 40


def test_nested_json_data_is_accepted() -> None:
    rows = [[float(i)] * 64 for i in range(3)]
    body = orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 64], "data": rows}]})
    assert decode_request(body, None, DIGITS).inputs["input"].shape == (3, 64)


def test_flat_and_nested_float_data_decode_alike() -> None:
    rows = [[i + j / 64 for j in range(64)] for i in range(3)]
    flat = [x for row in rows for x in row]
    for datatype, model_type in (("FP32", "FP32"), ("FP64", "FP64"), ("FP16", "FP16")):
        signature = Signature((TensorSpec("input", model_type, (-1, 64)),), DIGITS.outputs)
        decoded = [decode_request(orjson.dumps({"inputs": [{"name": "input", "datatype": datatype, "shape": [3, 64],
                                                            "data": data}]}), None, signature).inputs["input"]
                   for data in (flat, rows, [int(x) for x in flat])]
        assert decoded[0].dtype == DATATYPES[datatype] and decoded[0].shape == (3, 64)
        np.testing.assert_array_equal(decoded[0], decoded[1])
        np.testing.assert_array_equal(decoded[2], np.asarray([int(x) for x in flat], dtype=DATATYPES[datatype])
                                      .reshape(3, 64))


def _one(**entry: object) -> bytes:
    base: dict[str, object] = {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}
    base.update(entry)
    return orjson.dumps({"inputs": [base]})


@pytest.mark.parametrize(("body", "message"), [
    (b"not json", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (orjson.dumps({"inputs": []}), "non-empty list"),
    (orjson.dumps({"inputs": {"name": "input"}}), "non-empty list"),
    (orjson.dumps({"inputs": [5]}), "each input must be an object"),
    (_one(name="pixels"), "input 'pixels' is unknown"),
    (_one(datatype="FP64"), "does not match the model's FP32"),
    (_one(datatype="FLOAT"), "accepted datatypes"),
    (_one(shape=[1, 63]), "does not match the model's [-1, 64]"),
    (_one(shape=[64]), "has 1 dimensions"),
    (_one(shape=[1, -64]), "non-negative integers"),
    (_one(shape="1x64"), "non-negative integers"),
    (_one(data=[0.5] * 63), "needs 64"),
    (_one(data=["a"] * 64), "must be numbers"),
    (_one(data=[0.5] * 63 + ["0.5"]), "must be numbers"),
    (_one(data=[0.5] * 63 + [None]), "must be numbers"),
    (_one(data=[[0.5] * 63, [0.5]]), "ragged"),
    (_one(data=5), "must be a list"),
    (_one(data=None, parameters={}), "must be a list"),
    (orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64]}]}), "neither 'data'"),
    (orjson.dumps({"id": 7, "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                                        "data": [0] * 64}]}), "'id' must be a string"),
    (orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0] * 64}],
                   "outputs": [{"name": "probs"}]}), "requested output 'probs' is unknown"),
    (orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0] * 64}] * 2}),
     "given twice"),
])
def test_bad_json_requests_are_refused_with_a_reason(body: bytes, message: str) -> None:
    with pytest.raises(InvalidInput) as err:
        decode_request(body, None, DIGITS)
    assert message in err.value.message


def test_integer_and_bool_inputs_are_type_checked() -> None:
    def req(name: str, datatype: str, data: list[object]) -> bytes:
        return orjson.dumps({"inputs": [{"name": name, "datatype": datatype, "shape": [1, 3], "data": data}]})

    sig = Signature((TensorSpec("i8", "INT8", (-1, 3)),), (TensorSpec("o", "INT8", (-1, 3)),))
    with pytest.raises(InvalidInput, match="must fit INT8"):
        decode_request(req("i8", "INT8", [1, 2, 300]), None, sig)
    with pytest.raises(InvalidInput, match="must be integers"):
        decode_request(req("i8", "INT8", [1.5, 2, 3]), None, sig)
    bsig = Signature((TensorSpec("b", "BOOL", (-1, 3)),), (TensorSpec("o", "BOOL", (-1, 3)),))
    with pytest.raises(InvalidInput, match="true/false"):
        decode_request(req("b", "BOOL", [1, 0, 1]), None, bsig)


def test_bad_binary_requests_are_refused_with_a_reason() -> None:
    header = orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                                       "parameters": {"binary_data_size": 256}}]})
    good = header + np.zeros(64, np.float32).tobytes()
    assert decode_request(good, len(header), DIGITS).inputs["input"].shape == (1, 64)
    cases = [
        (header + b"\0" * 100, len(header), "runs past the end"),
        (header + b"\0" * 300, len(header), "binary bytes that no input"),
        (good, len(good) + 5, "Inference-Header-Content-Length is"),
        (good, None, "not valid JSON"),
        (header, None, "no Inference-Header-Content-Length"),
    ]
    for body, hlen, message in cases:
        with pytest.raises(InvalidInput) as err:
            decode_request(body, hlen, DIGITS)
        assert message in err.value.message, (message, err.value.message)
    wrong_size = orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                                           "parameters": {"binary_data_size": 200}}]})
    with pytest.raises(InvalidInput, match="needs 256"):
        decode_request(wrong_size + b"\0" * 200, len(wrong_size), DIGITS)
    bsig = Signature((TensorSpec("s", "BYTES", (-1,)),), (TensorSpec("o", "BYTES", (-1,)),))
    bad_bytes = orjson.dumps({"inputs": [{"name": "s", "datatype": "BYTES", "shape": [1],
                                          "parameters": {"binary_data_size": 6}}]})
    with pytest.raises(InvalidInput, match="runs past binary_data_size"):
        decode_request(bad_bytes + b"\x09\0\0\0ab", len(bad_bytes), bsig)


def _req(name: str, datatype: str, data: object, **extra: object) -> bytes:
    return orjson.dumps({"inputs": [{"name": name, "datatype": datatype, "shape": [1, 3], "data": data}], **extra})


def _only(*names: str) -> Signature:
    return Signature(tuple(SIG.input_by_name[n] for n in names), SIG.outputs)


@pytest.mark.parametrize(("datatype", "data", "message"), [
    ("FP32", [1.0, 1e39, 2.0], "values must fit FP32 [-3.4028235e+38, 3.4028235e+38], got 1e+39"),
    ("FP32", [[1.0, -1e39, 2.0]], "got -1e+39"),
    ("FP16", [1.0, 70000.0, 2.0], "values must fit FP16 [-65504, 65504], got 70000.0"),
    ("FP16", [[1, 2, -70000]], "got -70000.0"),
])
def test_json_numbers_a_float_datatype_cannot_hold_are_refused(datatype: str, data: object, message: str) -> None:
    with pytest.raises(InvalidInput) as err:
        decode_request(_req(f"in_{datatype.lower()}", datatype, data), None, _only(f"in_{datatype.lower()}"))
    assert message in err.value.message
    fits = decode_request(_req("in_fp64", "FP64", [1e300, -1e300, 3e38]), None, _only("in_fp64")).inputs["in_fp64"]
    assert fits.tolist() == [[1e300, -1e300, 3e38]]


@pytest.mark.parametrize("datatype", ["UINT8", "INT8", "INT32", "INT64", "FP16", "FP32", "FP64"])
@pytest.mark.parametrize("data", [[1, True, 2], [False, 0, 1], [[1, 2, True]], [True, True, True]])
def test_booleans_are_refused_for_every_numeric_datatype(datatype: str, data: object) -> None:
    expected = "numbers" if datatype.startswith("FP") else "integers"
    with pytest.raises(InvalidInput, match=f"{datatype} data must be {expected}, got (true/false|bool values)"):
        decode_request(_req(f"in_{datatype.lower()}", datatype, data), None, _only(f"in_{datatype.lower()}"))


def test_true_and_false_elsewhere_in_a_request_leave_numbers_alone() -> None:
    body = _req("in_fp32", "FP32", [0.5, 1, 2], id="true false", outputs=[
        {"name": "out_fp32", "parameters": {"binary_data": True}}], parameters={"binary_data_output": False})
    assert decode_request(body, None, _only("in_fp32")).inputs["in_fp32"].tolist() == [[0.5, 1.0, 2.0]]
    both = orjson.dumps({"inputs": [
        {"name": "in_bool", "datatype": "BOOL", "shape": [1, 3], "data": [True, False, True]},
        {"name": "in_int8", "datatype": "INT8", "shape": [1, 3], "data": [1, 0, 1]}]})
    decoded = decode_request(both, None, _only("in_bool", "in_int8")).inputs
    assert decoded["in_bool"].dtype == np.bool_ and decoded["in_int8"].tolist() == [[1, 0, 1]]
    # many strings full of 'u' and 'l' before the data: the cheap look gives up and the exact check still finds it
    noisy = orjson.dumps({"id": "fullull lulu " * 40, "inputs": [
        {"name": "in_bytes", "datatype": "BYTES", "shape": [2], "data": ["lull", "ululate"]},
        {"name": "in_fp32", "datatype": "FP32", "shape": [1, 3], "data": [1.0, 2.0, False]}]})
    with pytest.raises(InvalidInput, match="got true/false"):
        decode_request(noisy, None, _only("in_bytes", "in_fp32"))


def test_a_boolean_in_binary_request_json_is_refused_too() -> None:
    header = orjson.dumps({"inputs": [
        {"name": "in_fp32", "datatype": "FP32", "shape": [1, 3], "data": [1.0, True, 3.0]},
        {"name": "in_int8", "datatype": "INT8", "shape": [1, 3], "parameters": {"binary_data_size": 3}}]})
    with pytest.raises(InvalidInput, match="got true/false"):
        decode_request(header + b"\x01\x02\x03", len(header), _only("in_fp32", "in_int8"))


@pytest.mark.parametrize(("body", "message"), [
    (_one(parameters=[]), "input 'input': 'parameters' must be an object, got list"),
    (orjson.dumps({"parameters": 0, "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                                                "data": [0.5] * 64}]}), "'parameters' must be an object, got int"),
    (orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}],
                   "outputs": [{"name": "logits", "parameters": ""}]}), "output 'logits': 'parameters' must be"),
])
def test_parameters_that_are_not_objects_are_refused(body: bytes, message: str) -> None:
    with pytest.raises(InvalidInput) as err:
        decode_request(body, None, DIGITS)
    assert message in err.value.message


def test_null_parameters_id_and_outputs_mean_none_given() -> None:
    body = orjson.dumps({"id": None, "parameters": None, "outputs": None, "inputs": [
        {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64, "parameters": None}]})
    request = decode_request(body, None, DIGITS)
    assert request.id is None and request.outputs is None and request.inputs["input"].shape == (1, 64)
