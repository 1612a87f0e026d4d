"""HTTP runner: forwards to a remote Open Inference Protocol server (Triton, KServe, MLServer, modelroll).

Tensors travel with the binary tensor data extension. Remote errors and timeouts become
`RunnerError` / `RunnerTimeout`; the remote's memory cannot be measured from here (None).
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import numpy as np
import orjson

from router.protocol import deserialize_bytes, serialize_bytes
from router.runners import Runner, RunnerError, RunnerTimeout, Tensors
from router.tensors import DATATYPES, Signature, datatype_of

_HEADER = "inference-header-content-length"


def encode_request(inputs: Tensors, outputs: list[str]) -> tuple[bytes, int]:
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, array in inputs.items():
        dtype = datatype_of(array)
        blob = serialize_bytes(array) if dtype == "BYTES" else np.ascontiguousarray(array).tobytes()
        entries.append({"name": name, "datatype": dtype, "shape": list(array.shape),
                        "parameters": {"binary_data_size": len(blob)}})
        blobs.append(blob)
    header = orjson.dumps({
        "inputs": entries,
        "outputs": [{"name": n, "parameters": {"binary_data": True}} for n in outputs],
    })
    return header + b"".join(blobs), len(header)


def decode_response(body: bytes, header_length: int | None) -> Tensors:
    view = memoryview(body)
    head = view if header_length is None else view[:header_length]
    binary = view[len(view):] if header_length is None else view[header_length:]
    answer = orjson.loads(head)
    out: Tensors = {}
    offset = 0
    for entry in answer.get("outputs", ()):
        datatype, shape = entry["datatype"], tuple(entry["shape"])
        size = (entry.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            chunk = binary[offset:offset + size]
            offset += size
            if datatype == "BYTES":
                count = int(np.prod(shape)) if shape else 1
                out[entry["name"]] = deserialize_bytes(entry["name"], chunk, count).reshape(shape)
            else:
                out[entry["name"]] = np.frombuffer(chunk, dtype=DATATYPES[datatype]).reshape(shape)
        elif datatype == "BYTES":
            out[entry["name"]] = np.array([s.encode() for s in entry["data"]], dtype=object).reshape(shape)
        else:
            out[entry["name"]] = np.asarray(entry["data"], dtype=DATATYPES[datatype]).reshape(shape)
    return out


class HttpRunner(Runner):
    kind = "http"

    def __init__(self, base_url: str, remote_model: str, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.remote_model = remote_model
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout_s,
                                    limits=httpx.Limits(max_keepalive_connections=16))
        self._infer_path = f"/v2/models/{remote_model}/infer"
        try:
            answer = self._client.get(f"/v2/models/{remote_model}")
        except httpx.HTTPError as exc:
            raise RunnerError(f"remote V2 server {self.base_url} is unreachable: {exc}") from exc
        if answer.status_code != 200:
            raise RunnerError(f"remote V2 server {self.base_url} has no model {remote_model!r} "
                              f"(HTTP {answer.status_code}: {answer.text[:200]})")
        self.signature = Signature.from_dict(orjson.loads(answer.content))
        self._outputs = [t.name for t in self.signature.outputs]

    def run(self, inputs: Tensors, timeout_s: float | None = None) -> tuple[Tensors, float, float | None]:
        body, header_length = encode_request(inputs, self._outputs)
        start = time.thread_time()
        try:
            answer = self._client.post(
                self._infer_path, content=body,
                headers={"Inference-Header-Content-Length": str(header_length),
                         "Content-Type": "application/octet-stream"},
                timeout=timeout_s if timeout_s is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.TimeoutException as exc:
            raise RunnerTimeout(f"remote {self.base_url} did not answer within {timeout_s}s") from exc
        except httpx.HTTPError as exc:
            raise RunnerError(f"remote {self.base_url} failed: {exc}") from exc
        if answer.status_code != 200:
            raise RunnerError(f"remote {self.base_url} answered HTTP {answer.status_code}: {answer.text[:200]}")
        raw_len = answer.headers.get(_HEADER)
        try:
            outputs = decode_response(answer.content, int(raw_len) if raw_len else None)
        except (ValueError, KeyError, TypeError) as exc:
            raise RunnerError(f"remote {self.base_url} sent an unreadable answer: {exc}") from exc
        return outputs, (time.thread_time() - start) * 1000.0, None

    def close(self) -> None:
        self._client.close()
