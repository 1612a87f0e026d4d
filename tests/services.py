"""The machine's PostgreSQL and Redis: started when they are down (CI and fresh sessions), a test's keys dropped."""

from __future__ import annotations

import os
import socket
import subprocess
import time

PG_HOST, PG_PORT = "127.0.0.1", 5432
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait_port(host: str, port: int, deadline_s: float) -> bool:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if _port_open(host, port):
            return True
        time.sleep(0.2)
    return False


def ensure_postgres() -> None:
    if _port_open(PG_HOST, PG_PORT):
        return
    versions = os.listdir("/etc/postgresql")
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", versions[0], "main", "start"], check=False
    )
    if not _wait_port(PG_HOST, PG_PORT, 30):
        raise RuntimeError("PostgreSQL on 127.0.0.1:5432 is down and could not be started")


def start_redis() -> None:
    os.makedirs("/var/log/redis", exist_ok=True)
    os.makedirs("/var/lib/redis", exist_ok=True)
    subprocess.run(
        ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", str(REDIS_PORT),
         "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log"],
        check=False,
    )
    if not _wait_port(REDIS_HOST, REDIS_PORT, 30):
        raise RuntimeError("Redis on 127.0.0.1:6379 is down and could not be started")


def ensure_redis() -> None:
    if not _port_open(REDIS_HOST, REDIS_PORT):
        start_redis()


def drop_redis_keys(redis_url: str, prefix: str) -> None:
    """Delete every key under `prefix` (a test's own), leaving everyone else's."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def pg_admin_url() -> str:
    """A libpq URL for the `test` database as whichever of root/postgres exists."""
    import psycopg

    for user in ("postgres", "root"):
        url = f"postgresql://{user}@{PG_HOST}:{PG_PORT}/test"
        try:
            with psycopg.connect(url, connect_timeout=3):
                return url
        except psycopg.OperationalError:
            continue
    raise RuntimeError("cannot connect to PostgreSQL as postgres or root on database test")
