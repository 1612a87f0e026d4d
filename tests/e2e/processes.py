"""Real processes on loopback for the end-to-end tests: the `modelroll` services (router, controller, worker).

Each one logs to a file, answers a readiness poll with a deadline, and stops with SIGTERM (SIGKILL after a grace).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx

from tests import loopback
from tests.loopback import free_port

MODELROLL = str(Path(sys.executable).parent / "modelroll")


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 30.0, every_s: float = 0.05) -> Any:
    """The shared poller with the end-to-end tests' defaults: HTTP errors count as not yet."""
    return loopback.wait_for(check, timeout_s, what, every_s, ignore=(httpx.HTTPError,))


def cli(env: Mapping[str, str], *args: str) -> Any:
    """Run `modelroll ARGS --json` and return its JSON answer (fails the test on a non-zero exit)."""
    out = subprocess.run([MODELROLL, *args, "--json"], env=dict(env), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one Prometheus sample in an exposition text (labels matched as given), or None."""
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        rest = head[len(name):]
        if rest and not rest.startswith("{"):
            continue  # a longer metric name with the same prefix
        found = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return None


class Process:
    """One subprocess with its own log file."""

    def __init__(self, args: list[str], env: Mapping[str, str], log: Path) -> None:
        self.log_path = log
        self.log_file = log.open("wb")
        # Run beside its log: whatever a process writes to its working directory stays out of the repository.
        self.proc = subprocess.Popen(args, env=dict(env), stdout=self.log_file, stderr=subprocess.STDOUT,
                                     cwd=log.parent)

    def ready(self) -> bool:
        """Subclasses ask the service itself; a bare process is ready while it runs."""
        self.check_alive()
        return True

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.log_path.stem} exited {self.proc.returncode}: {self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs (a crashed node)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, grace_s: float = 15.0) -> None:
        stop_all([self], grace_s)


def stop_all(processes: list[Process], grace_s: float = 15.0) -> None:
    """SIGTERM them all at once, then wait for each (SIGKILL past the grace period)."""
    for p in processes:
        if p.proc.poll() is None:
            p.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in processes:
        try:
            p.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.proc.kill()
            p.proc.wait(5)
        p.log_file.close()


class Controller(Process):
    """`modelroll controller`: the ops API and the reconciler (one leader at a time)."""

    def __init__(self, env: Mapping[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__([MODELROLL, "controller", "--port", str(self.port)], env, log)

    def ready(self) -> bool:
        self.check_alive()
        return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200

    def leading(self) -> bool:
        r = httpx.get(f"{self.url}/readyz", timeout=2)
        return bool(r.json()["checks"]["leader"]["leading"])

    def leader_metric(self) -> float | None:
        return metric(httpx.get(f"{self.url}/metrics", timeout=2).text, "modelroll_controller_leader")


class Router(Process):
    """`modelroll router`: the V2 data plane over the catalog (database + shared artifacts)."""

    def __init__(self, env: Mapping[str, str], log: Path, workers: int = 1) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__([MODELROLL, "router", "--port", str(self.port), "--workers", str(workers)], env, log)

    def readiness(self) -> dict[str, Any]:
        answer: dict[str, Any] = httpx.get(f"{self.url}/v2/health/ready", timeout=2).json()
        return answer

    def ready(self) -> bool:
        self.check_alive()
        return httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=2).text


class Worker(Process):
    """`modelroll worker`: takes optimization jobs from the Redis queue; /metrics on its own port."""

    def __init__(self, env: Mapping[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__([MODELROLL, "worker"], {**env, "MODELROLL_WORKER_PORT": str(self.port)}, log)

    def ready(self) -> bool:
        self.check_alive()
        return httpx.get(f"{self.url}/metrics", timeout=2).status_code == 200
