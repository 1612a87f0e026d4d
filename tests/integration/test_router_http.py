"""The router behind a real HTTP server on loopback: a body that never arrives is a 408, one over the limit a 413."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import orjson

from modelroll.live.memory import MemoryChannel
from tests.router_fixtures import (
    digits_paths,
    digits_rows,
    digits_source,
    infer_body,
    router_settings,
    running_app,
    served,
)

__all__ = ["digits_paths"]  # fixtures


def _exchange(url: str, head: bytes, body_part: bytes = b"", later: bytes = b"", pause_s: float = 0.0,
              deadline_s: float = 10.0) -> tuple[int, dict[str, str], bytes, bool, float]:
    """Send `head` and `body_part` (then `later` after `pause_s`) on a raw socket; read the answer.
    Returns (status, headers, body, whether the server then closed the connection, seconds to the answer)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=deadline_s) as sock:
        start = time.monotonic()
        sock.sendall(head + body_part)
        if later:
            time.sleep(pause_s)
            sock.sendall(later)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed before an answer: {data!r}"
            data += chunk
        elapsed = time.monotonic() - start
        raw_head, _, rest = data.partition(b"\r\n\r\n")
        lines = raw_head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        while len(rest) < int(headers["content-length"]):
            rest += sock.recv(65536)
        sock.settimeout(0.5)  # a server that closes does so right after its answer
        try:
            closed = sock.recv(1) == b""
        except TimeoutError:
            closed = False
        return status, headers, rest, closed, elapsed


def _head(path: str, length: int) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: router\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def test_a_body_shorter_than_its_content_length_is_a_408_after_the_read_timeout(tmp_path: Path,
                                                                                 digits_paths: dict[str, Path]) -> None:
    settings = router_settings(tmp_path, router_read_timeout_s=0.5)
    with running_app(settings, MemoryChannel(), digits_source(digits_paths)) as app, served(app) as url:
        for path, sent in [("/v2/models/digits/infer", b'{"inputs": '), ("/v2/models/digits/infer", b""),
                           ("/v1/feedback", b'[{"request_id": ')]:
            status, headers, body, closed, elapsed = _exchange(url, _head(path, 1000), sent)
            assert status == 408, (path, body)
            error = orjson.loads(body)["error"]
            assert f"{len(sent)} of 1000 declared bytes arrived" in error and "MODELROLL_ROUTER_READ_TIMEOUT_S" in error
            assert headers["connection"] == "close" and closed  # the rest of the body is never read as a request
            assert 0.45 < elapsed < 5.0, (path, elapsed)
        rows, _ = digits_rows(1)
        whole = infer_body(rows)
        half = len(whole) // 2  # a slow client that sends everything in time is served
        status, _, body, _, _ = _exchange(url, _head("/v2/models/digits/infer", len(whole)), whole[:half],
                                          whole[half:], pause_s=0.2)
        assert status == 200, body
    timed_out = app.metrics.registry.get_sample_value(
        "modelroll_requests_total", {"model": "digits", "variant": "-", "code": "408"})
    assert timed_out == 2


def test_a_declared_body_over_the_limit_is_a_413_at_once_and_closes(tmp_path: Path,
                                                                    digits_paths: dict[str, Path]) -> None:
    settings = router_settings(tmp_path, router_max_body_bytes=4096, router_read_timeout_s=30.0)
    with running_app(settings, MemoryChannel(), digits_source(digits_paths)) as app, served(app) as url:
        status, headers, body, closed, elapsed = _exchange(url, _head("/v2/models/digits/infer", 10**9), b"x" * 100)
        assert status == 413 and "limit is 4096 bytes" in orjson.loads(body)["error"]
        assert headers["connection"] == "close" and closed and elapsed < 5.0
