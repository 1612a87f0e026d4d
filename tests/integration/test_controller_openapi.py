"""The ops API does what its OpenAPI document says: schemathesis with every check (status codes, content types,
headers, bodies, schema-valid data accepted, invalid data rejected, missing headers, auth ignored, methods), in
each auth mode (no token with anonymous reads on, viewer, operator, admin), with a bounded number of examples."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.config import SchemathesisConfig
from schemathesis.core.transport import Response
from schemathesis.generation.case import Case
from schemathesis.openapi.checks import RejectedPositiveData
from schemathesis.specs.openapi.checks import positive_data_acceptance
from sqlalchemy.orm import sessionmaker

from controller import api_apply
from controller.api import ApiContext
from controller.app import create_app
from modelroll.settings import Settings
from tests import services
from tests.integration.controller_world import World, make_world, own_database
from tests.loopback import ServedApp

pytestmark = pytest.mark.timeout(120)


def config(*, coverage: bool) -> SchemathesisConfig:
    return SchemathesisConfig.from_dict({
        "phases": {"examples": {"enabled": True}, "coverage": {"enabled": coverage}, "fuzzing": {"enabled": True},
                   "stateful": {"enabled": False}},
        "generation": {"max-examples": 8, "deterministic": True},
        # A missing If-Match is 428 Precondition Required (RFC 6585), the status made for it; schemathesis'
        # default list for a missing header predates it.
        "checks": {"missing_required_header": {"expected-statuses": [400, 401, 403, 406, 415, 422, 428]}},
    })


# Rules about how fields go together or about what the target is, which a JSON Schema cannot state: a schema-valid
# request that breaks one is a 400 whose message names the rule. Any other 400 on schema-valid data fails the run.
STEP_RULES = ("a step with weight_pct 0 must be a shadow step", "a shadow step serves no candidate traffic",
              "weights must go up", "shadow steps must come before", "at least one traffic step",
              "must be >= min_duration_s", "timeout_s bounds the wait", "needs timeout_s", "must differ",
              "is given twice")
RULES_BEYOND_THE_SCHEMA = {
    "POST /v1/rollouts": STEP_RULES,
    "POST /v1/apply": api_apply.RULES_BEYOND_THE_SCHEMA,  # its documents' rules, listed beside the route
    "POST /v1/optimizations": ("need the torch model", "has no eval set of its own"),
}
# Recipes (`format: recipe`, their grammar in the description) drawn from what the grammar accepts.
_AMOUNTS = st.sampled_from(["0.1", "0.25", "0.5", "0.75"])
_SHRINK = st.one_of(st.just(""), st.just("drop-layers"), _AMOUNTS.map(lambda a: f"prune:{a}"),
                    _AMOUNTS.map(lambda a: f"prune:{a},distill"))
_QUANTIZE = st.sampled_from(["", "int8", "int8:per_channel", "int8-static", "int8-static:entropy",
                             "int8-static:percentile"])
schemathesis.openapi.format("recipe", st.tuples(_SHRINK, _QUANTIZE).filter(any).map(
    lambda steps: ",".join(step for step in steps if step)))


def positive_data_accepted_but_for_stated_rules(ctx: Any, response: Response,
                                                case: Case) -> bool | None:  # type: ignore[type-arg]
    """schemathesis' positive_data_acceptance, except for a 400 that names one of the operation's rules above."""
    try:
        return positive_data_acceptance(ctx, response, case)
    except RejectedPositiveData:
        rules = RULES_BEYOND_THE_SCHEMA.get(f"{case.method} {case.path}", ())
        error = response.json().get("error", "") if response.status_code == 400 else ""
        if any(rule in error for rule in rules):
            return None
        raise


# The document is read at collection from an app with anonymous reads on; the fixture then points that app at a
# world and serves it on loopback (real HTTP: far cheaper per request than an in-process client per call).
APP = create_app(Settings(allow_anonymous_viewer=True), None, sessionmaker())
# Every phase (the coverage phase: boundaries, each required header and parameter left out, every other method)
# for the two sides of the auth boundary; examples and fuzzing for the roles between, whose difference is 403s.
edges = schemathesis.openapi.from_dict(APP.openapi(), config=config(coverage=True))
between = schemathesis.openapi.from_dict(APP.openapi(), config=config(coverage=False))


@pytest.fixture(scope="module")
def world(pg_admin_url: str, redis_url: str) -> Iterator[World]:
    prefix = f"modelroll-test:{uuid.uuid4().hex[:12]}:"
    for url in own_database(pg_admin_url):
        for world in make_world(url, redis_url, prefix):
            world.settings = world.settings.model_copy(update={"allow_anonymous_viewer": True})
            with world.client() as client:  # rollout 1 exists, so ids and events can be found
                r = client.post("/v1/rollouts", headers=world.auth("admin"), json={"model": "digits",
                                                                                   "candidate": "int8"})
                assert r.status_code == 201, r.text
            APP.state.ctx = ApiContext(world.settings, world.channel, world.session_factory)
            yield world
    services.drop_redis_keys(redis_url, prefix)


@pytest.fixture(scope="module")
def served(world: World) -> Iterator[tuple[str, requests.Session]]:
    app = ServedApp(APP, name="controller")
    try:
        with requests.Session() as session:
            yield app.url, session
    finally:
        app.stop()


FRAMING = frozenset({"transfer-encoding", "content-length", "connection", "host", "expect", "upgrade", "te",
                     "trailer", "keep-alive"})


def call_and_validate(case: Case, who: str, world: World,  # type: ignore[type-arg]
                      served: tuple[str, requests.Session]) -> None:
    url, session = served
    headers = world.auth(who) if who != "anonymous" else {}
    for name in list(case.headers or {}):
        if name.lower() in FRAMING:  # the HTTP client's to set: uvicorn refuses a made-up one before the app runs
            del case.headers[name]
    case.call_and_validate(base_url=url, session=session, headers=headers, excluded_checks=[positive_data_acceptance],
                           additional_checks=[positive_data_accepted_but_for_stated_rules])


@pytest.mark.parametrize("who", ["anonymous", "admin"])
@edges.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_does_what_its_document_says_without_a_token_and_as_admin(
        case: Case, who: str, world: World, served: tuple[str, requests.Session]) -> None:  # type: ignore[type-arg]
    call_and_validate(case, who, world, served)


@pytest.mark.parametrize("who", ["viewer", "operator"])
@between.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_does_what_its_document_says_as_viewer_and_operator(
        case: Case, who: str, world: World, served: tuple[str, requests.Session]) -> None:  # type: ignore[type-arg]
    call_and_validate(case, who, world, served)


def test_the_document_states_if_match_names_bodies_and_media_types() -> None:
    document = APP.openapi()
    paths = document["paths"]
    for command in ("pause", "resume", "promote", "abort", "weight"):
        [if_match] = [p for p in paths[f"/v1/rollouts/{{rollout_id}}/{command}"]["post"]["parameters"]
                      if p["name"] == "If-Match"]
        assert if_match["in"] == "header" and if_match["required"] is True, command
    [name] = paths["/v1/models/{name}"]["get"]["parameters"]
    assert name["schema"]["pattern"] == "^[a-z0-9][a-z0-9._-]{0,62}$"
    body = document["components"]["schemas"]["OptimizationIn"]
    assert body["required"] == ["model"] and body["additionalProperties"] is False
    assert list(paths["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    assert {"401", "408", "413", "503"} <= set(paths["/v1/rollouts"]["post"]["responses"])


def test_anonymous_reads_are_documented_only_when_they_are_allowed() -> None:
    cases: list[tuple[bool, list[dict[str, list[str]]]]] = [(True, [{}, {"HTTPBearer": []}]),
                                                            (False, [{"HTTPBearer": []}])]
    for anonymous, reads in cases:
        paths = create_app(Settings(allow_anonymous_viewer=anonymous), None, sessionmaker()).openapi()["paths"]
        assert paths["/v1/rollouts"]["get"]["security"] == reads
        assert paths["/v1/rollouts"]["post"]["security"] == [{"HTTPBearer": []}]
        assert paths["/v1/audit"]["get"]["security"] == [{"HTTPBearer": []}]  # operator: always a token


def test_a_405_allows_every_documented_method_and_an_unknown_query_parameter_is_400(
        world: World, served: tuple[str, requests.Session]) -> None:
    url, session = served
    r = session.options(f"{url}/v1/rollouts")
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST" and r.json()["error"]
    r = session.get(f"{url}/v1/rollouts", params={"phse": "promoted"}, headers=world.auth("viewer"))
    assert r.status_code == 400
    assert r.json()["error"] == ("unknown query parameter(s) ['phse']: GET /v1/rollouts takes "
                                 "['active', 'limit', 'model', 'phase']")
