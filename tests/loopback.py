"""Real servers on loopback for tests: a free port, an ASGI app under uvicorn, a redis-server of a test's own.

The private Redis is for the tests that stop and restart Redis (fail-static, failover); every other test shares
the machine's Redis through the `redis_url` + `redis_prefix` fixtures.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelroll_app.up import bind, url_of


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServedApp:
    """An ASGI app under uvicorn on a background thread, on a free loopback port."""

    def __init__(self, app: Any, name: str = "test-app") -> None:
        import uvicorn

        self.sock = bind("127.0.0.1", 0)
        self.url = url_of(self.sock)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                                    timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name=name)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise AssertionError(f"uvicorn did not start serving {name} within 20 s")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


class RedisServer:
    """redis-server without persistence on a free port; keeps the port across `stop()` and `start()` (clients
    reconnect to the same URL) and comes back empty."""

    def __init__(self, directory: Path, start_timeout_s: float = 20.0) -> None:
        self.port = free_port()
        self.directory = directory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if shutil.which("redis-server") is None:
            raise AssertionError("redis-server is not installed; tests that stop Redis need one of their own")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + self.start_timeout_s
        while not self._accepts():
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"redis-server on port {self.port} did not accept in {self.start_timeout_s} s")
            time.sleep(0.05)

    def _accepts(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"redis-server on port {self.port} exited {self.proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
            self.proc = None


def wait_for(check: Callable[[], Any], timeout_s: float = 10.0, what: str = "condition", every_s: float = 0.02,
             ignore: tuple[type[BaseException], ...] = ()) -> Any:
    """Poll `check` until it returns something truthy (and return that); fail after `timeout_s`.
    Exceptions of the `ignore` types (a server not up yet) count as "not yet"."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = check()
        except ignore:
            value = None
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
