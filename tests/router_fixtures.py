"""Shared set-up for the router's tests: model files once per session, an app over a live channel, polling."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from modelroll.live.base import LiveChannel, Sample
from modelroll.settings import Settings
from router.app import RouterApp, create_app
from router.variants import StaticVariantSource, VariantSpec
from tests.loopback import wait_for
from tests.router_models import build_all_types, build_digits, digits_data


@pytest.fixture(scope="session")
def digits_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_digits(tmp_path_factory.mktemp("router-models") / "digits")


@pytest.fixture(scope="session")
def all_types_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_all_types(tmp_path_factory.mktemp("router-types") / "all_types.onnx")


def digits_source(paths: dict[str, Path], runner: str | None = None, **extra: VariantSpec) -> StaticVariantSource:
    specs = [VariantSpec("digits", name, "baseline" if name == "baseline" else "candidate", path,
                         runner=runner if name != "baseline" else None) for name, path in paths.items()]
    return StaticVariantSource(specs + list(extra.values()))


def router_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Router settings for tests, with the inline runner unless a test names another: most router tests are about
    the protocol and routing, and a child process per variant doubles their time (the default, subprocess, is
    what the runner tests, the e2e tests and the benchmark run)."""
    base: dict[str, Any] = {"home": tmp_path / "home", "router_flush_interval_s": 0.05, "router_runner": "inline",
                            "router_memory_interval_s": 0.2, "router_breaker_failures": 5}
    base.update(overrides)
    return Settings(**base)


def split_version(app: RouterApp, model: str) -> int:
    config = app.table.routes[model].config
    return config.version if config is not None else 0


def infer_body(rows: np.ndarray, request_id: str | None = None, **extra: Any) -> bytes:
    body: dict[str, Any] = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(rows.shape),
                                        "data": rows.reshape(-1).tolist()}], **extra}
    if request_id is not None:
        body["id"] = request_id
    return orjson.dumps(body)


def digits_rows(n: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    x, y = digits_data()
    return x[offset:offset + n], y[offset:offset + n]


class SampleLog:
    """Every sample the router sent, read through a consumer group of the real channel."""

    def __init__(self, channel: LiveChannel) -> None:
        self.channel = channel
        self.samples: list[Sample] = []

    def read(self) -> list[Sample]:
        while True:
            batch = self.channel.read_samples("router-tests", "t", 5000)
            if not batch.samples:
                return self.samples
            self.samples.extend(batch.samples)
            self.channel.ack_samples("router-tests", batch.ids)

    def wait(self, check: Callable[[list[Sample]], bool], timeout_s: float = 10.0) -> list[Sample]:
        return wait_for(lambda: check(self.read()) and self.samples, timeout_s, "samples")  # type: ignore[no-any-return]


@contextmanager
def running_app(settings: Settings, channel: LiveChannel, source: StaticVariantSource,
                **kwargs: Any) -> Iterator[RouterApp]:
    app = create_app(settings, channel, source, **kwargs)
    try:
        yield app
    finally:
        app.close()


def client(app: RouterApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://router", timeout=30)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def served(app: Any, port: int | None = None) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a loopback port in a thread (a real HTTP server)."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                          lifespan="off", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 20, "uvicorn start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def run(coro: Any) -> Any:
    return asyncio.run(coro)
