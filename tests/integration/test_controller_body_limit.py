"""Request bodies on a real controller over loopback: over the limit → 413 before anything reads or authenticates
it (by Content-Length and by chunked streaming), a declared body never sent → 408 within the read timeout, and the
connection closed; bodies within the limit are served as before."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from controller.app import create_app
from tests.integration.controller_world import World, make_world
from tests.loopback import ServedApp

pytestmark = pytest.mark.timeout(120)

LIMIT = 4096
TIMEOUT_S = 0.5
ROLLOUT = {"model": "digits", "candidate": "int8"}


@pytest.fixture()
def world(pg_url: str, redis_url: str, redis_prefix: str) -> Iterator[World]:
    for world in make_world(pg_url, redis_url, redis_prefix):
        world.settings = world.settings.model_copy(update={"controller_max_body_bytes": LIMIT,
                                                           "controller_read_timeout_s": TIMEOUT_S})
        yield world


@pytest.fixture()
def served(world: World) -> Iterator[ServedApp]:
    app = ServedApp(create_app(world.settings, world.channel, world.session_factory), name="controller")
    try:
        yield app
    finally:
        app.stop()


def exchange(url: str, head: str, chunks: list[bytes], *, wait_s: float = 5.0) -> tuple[int, dict[str, str], bytes,
                                                                                        float]:
    """Send a request head and body chunks on a raw socket; (status, headers, body, seconds to the answer).
    The answer must end with the server closing the connection."""
    parts = urlsplit(url)
    started = time.monotonic()
    with socket.create_connection((parts.hostname, parts.port), timeout=wait_s) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
        for chunk in chunks:
            sock.sendall(chunk)
        data = b""
        while True:
            try:
                got = sock.recv(65536)
            except TimeoutError:
                raise AssertionError(f"no answer, or the connection stayed open, after {wait_s} s: {data!r}") from None
            if not got:
                break
            data += got
    elapsed = time.monotonic() - started
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    lines = head_bytes.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body, elapsed


def request_head(length: str | None = None, *, chunked: bool = False, path: str = "/v1/rollouts") -> str:
    lines = [f"POST {path} HTTP/1.1", "Host: controller", "Content-Type: application/json"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    return "\n".join(lines) + "\n"


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def test_a_declared_length_over_the_limit_is_413_at_once_without_a_token(served: ServedApp) -> None:
    status, headers, body, elapsed = exchange(served.url, request_head(str(256 * 2**20)), [])
    assert status == 413, body
    error = orjson.loads(body)["error"]
    assert f"over {LIMIT} bytes" in error and "MODELROLL_CONTROLLER_MAX_BODY_BYTES" in error
    assert headers["content-type"] == "application/json" and headers["connection"] == "close"
    assert elapsed < 1.0, f"refusing an unread body took {elapsed:.2f} s"


def test_a_chunked_body_passing_the_limit_is_413(served: ServedApp) -> None:
    piece = b"x" * 2048
    status, headers, body, _ = exchange(served.url, request_head(chunked=True), [chunk(piece)] * 3)
    assert status == 413 and "MODELROLL_CONTROLLER_MAX_BODY_BYTES" in orjson.loads(body)["error"], body
    assert headers["connection"] == "close"


def test_a_declared_body_never_sent_is_408_within_the_timeout(served: ServedApp) -> None:
    status, headers, body, elapsed = exchange(served.url, request_head("1000"), [b'{"model": '])
    assert status == 408, body
    assert "MODELROLL_CONTROLLER_READ_TIMEOUT_S" in orjson.loads(body)["error"]
    assert headers["connection"] == "close"
    assert TIMEOUT_S <= elapsed < TIMEOUT_S + 1.5, elapsed
    status, _, body, elapsed = exchange(served.url, request_head(chunked=True), [chunk(b'{"model": ')])
    assert status == 408 and elapsed < TIMEOUT_S + 1.5, body


def test_a_body_within_the_limit_is_served_sent_whole_or_chunked(served: ServedApp, world: World) -> None:
    with httpx.Client(base_url=served.url, headers=world.auth("operator")) as client:
        r = client.post("/v1/rollouts", json=ROLLOUT)
        assert r.status_code == 201, r.text
        r = client.post("/v1/rollouts", content=iter([b'{"model": "digits", ', b'"candidate": "int8"}']),
                        headers={"Content-Type": "application/json"})
        assert r.status_code == 409 and "already has an active rollout" in r.json()["error"], r.text
        r = client.post("/v1/rollouts", json={**ROLLOUT, "padding": "x" * LIMIT})
        assert r.status_code == 413 and "error" in r.json()
        assert client.get("/v1/rollouts").status_code == 200  # a new connection after the close
