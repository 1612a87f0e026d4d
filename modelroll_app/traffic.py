"""A bounded client load for the demo: real labelled rows sent through the V2 API, labels sent back late.

Each request carries a routing key drawn from a fixed population of users (so the sticky split is
exercised), and its label is posted to `/v1/feedback` `feedback_delay_s` later, as a real labelling
pipeline would. Loopback only; every loop is bounded by the stop event and a request budget.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field

import httpx
import numpy as np
import orjson


@dataclass
class TrafficStats:
    sent: int = 0
    failed: int = 0
    labels_sent: int = 0
    labels_joined: int = 0
    served_by: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)


class Traffic:
    """`clients` threads sending single-row requests until `stop()` or `max_requests`."""

    def __init__(self, router_url: str, model: str, inputs: np.ndarray, labels: np.ndarray, *,
                 input_name: str = "input", clients: int = 4, users: int = 2000, feedback_delay_s: float = 1.0,
                 max_requests: int = 2_000_000, seed: int = 7) -> None:
        if not router_url.startswith(("http://127.", "http://localhost", "http://[::1]")):
            raise ValueError(f"the demo load only targets loopback addresses, got {router_url}")
        self.url = f"{router_url}/v2/models/{model}/infer"
        self.feedback_url = f"{router_url}/v1/feedback"
        self.inputs = np.ascontiguousarray(inputs, dtype=np.float32)
        self.labels = labels.astype(int)
        self.input_name = input_name
        self.clients = clients
        self.users = users
        self.feedback_delay_s = feedback_delay_s
        self.max_requests = max_requests
        self.seed = seed
        self.stats = TrafficStats()
        self._pending: deque[tuple[float, str, int]] = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for index in range(self.clients):
            thread = threading.Thread(target=self._client, args=(index,), name=f"traffic-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        labeller = threading.Thread(target=self._labeller, name="traffic-labels", daemon=True)
        labeller.start()
        self._threads.append(labeller)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def _client(self, index: int) -> None:
        rng = np.random.default_rng(self.seed + index)
        with httpx.Client(timeout=10.0) as client:
            while not self._stop.is_set():
                with self._lock:
                    if self.stats.sent >= self.max_requests:
                        return
                    self.stats.sent += 1
                row = int(rng.integers(len(self.inputs)))
                request_id = uuid.uuid4().hex
                body = orjson.dumps({"id": request_id, "inputs": [{
                    "name": self.input_name, "shape": [1, self.inputs.shape[1]], "datatype": "FP32",
                    "data": self.inputs[row].tolist()}]})
                key = f"user-{int(rng.integers(self.users))}"
                try:
                    response = client.post(self.url, content=body, headers={
                        "content-type": "application/json", "x-modelroll-key": key})
                except httpx.HTTPError as exc:
                    self._failed(type(exc).__name__)
                    continue
                if response.status_code != 200:
                    self._failed(f"HTTP {response.status_code}")
                    continue
                with self._lock:
                    self.stats.served_by[response.headers.get("x-modelroll-variant", "?")] += 1
                    self._pending.append((time.monotonic(), request_id, int(self.labels[row])))

    def _failed(self, why: str) -> None:
        with self._lock:
            self.stats.failed += 1
            self.stats.errors[why] += 1

    def _labeller(self) -> None:
        with httpx.Client(timeout=10.0) as client:
            while not self._stop.wait(0.25):
                due = time.monotonic() - self.feedback_delay_s
                batch: list[dict[str, object]] = []
                with self._lock:
                    while self._pending and self._pending[0][0] <= due and len(batch) < 1000:
                        _, request_id, label = self._pending.popleft()
                        batch.append({"request_id": request_id, "label": label})
                if not batch:
                    continue
                try:
                    response = client.post(self.feedback_url, content=orjson.dumps(batch),
                                           headers={"content-type": "application/json"})
                except httpx.HTTPError as exc:
                    self._failed(f"feedback {type(exc).__name__}")
                    continue
                with self._lock:
                    self.stats.labels_sent += len(batch)
                    if response.status_code == 200:
                        results = orjson.loads(response.content).get("results", [])
                        self.stats.labels_joined += sum(1 for r in results if r.get("status") == "joined")
