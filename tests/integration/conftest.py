"""Fixtures the controller's integration tests share: a world on the test's own PostgreSQL database and Redis key
prefix (a module that needs other settings defines its own `world`), and an API client on it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.integration.controller_world import World, make_world


@pytest.fixture()
def world(pg_url: str, redis_url: str, redis_prefix: str) -> Iterator[World]:
    yield from make_world(pg_url, redis_url, redis_prefix)


@pytest.fixture()
def client(world: World) -> Iterator[TestClient]:
    with world.client() as c:
        yield c
