"""Fixtures shared by every test folder: real PostgreSQL and Redis, each test isolated."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelroll.settings import Settings
from tests import services
from tests.loopback import RedisServer


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    services.ensure_postgres()
    return services.pg_admin_url()


@pytest.fixture()
def pg_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test (SQLAlchemy psycopg 3 URL); dropped after."""
    import psycopg

    name = f"modelroll_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = pg_admin_url.rsplit("/", 1)[0]
    yield base.replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url() -> str:
    services.ensure_redis()
    return f"redis://{services.REDIS_HOST}:{services.REDIS_PORT}/0"


@pytest.fixture()
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix no other test or run uses; its keys are deleted after the test."""
    prefix = f"modelroll-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    services.drop_redis_keys(redis_url, prefix)


@pytest.fixture()
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A started redis-server of this test's own, for tests that stop and restart Redis; stopped after."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def embedded_settings(tmp_path: Path) -> Settings:
    """Settings of the embedded mode with all state under the test's own directory."""
    return Settings(home=tmp_path / "home")
