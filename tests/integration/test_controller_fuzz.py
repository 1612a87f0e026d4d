"""schemathesis against the OpenAPI of the ops API, in process: no input it can generate gets a 5xx."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.generation.case import Case
from sqlalchemy.orm import sessionmaker

from controller.api import ApiContext
from controller.app import create_app
from modelroll.settings import Settings
from tests.integration.controller_world import World, make_world, own_database

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def world(pg_admin_url: str, redis_url: str) -> Iterator[World]:
    """One world for every operation: the fuzzing only needs the app to have something to find."""
    import uuid

    import redis

    prefix = f"modelroll-test:{uuid.uuid4().hex[:12]}:"
    for url in own_database(pg_admin_url):
        yield from make_world(url, redis_url, prefix)
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)
    client.close()


# The schema is read at collection; each test then points the app at its own fresh database and channel.
APP = create_app(Settings(), None, sessionmaker())
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@pytest.fixture(scope="module")
def token(world: World) -> Iterator[str]:
    with world.client() as client:  # one rollout exists, so id 1 and its events are reachable
        r = client.post("/v1/rollouts", headers=world.auth("admin"),
                        json={"model": "digits", "baseline": "fp32", "candidate": "int8"})
        assert r.status_code == 201
    APP.state.ctx = ApiContext(world.settings, world.channel, world.session_factory)
    yield world.tokens["admin"]


@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_no_input_gets_a_server_error(case: Case, token: str) -> None:  # type: ignore[type-arg]
    headers = {"Authorization": f"Bearer {token}", "If-Match": '"1"'}
    response = case.call(headers=headers)
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code} {response.text}"
    if response.status_code >= 400:
        assert response.json().get("error"), response.text
