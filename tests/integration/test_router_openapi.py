"""The router's OpenAPI document (router/openapi.json, served at /openapi.json) against the router it describes.

schemathesis reads the packaged document (the test below proves the router serves exactly that file) and, against
a real router on loopback, runs every built-in check (status codes, content
types, headers and bodies as documented, valid data accepted, invalid data refused, undeclared methods 405 with
`Allow`, auth enforced where declared) over its examples, coverage and fuzzing phases, bounded.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.generation.case import Case
from schemathesis.specs.openapi.schemas import OpenApiSchema
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from modelroll.db import Base
from modelroll.live.memory import MemoryChannel
from tests.router_fixtures import digits_paths, digits_rows, digits_source, router_settings, running_app, served

__all__ = ["digits_paths"]  # fixtures

pytestmark = pytest.mark.timeout(300)

ADMIN = "admin-secret-for-the-fuzz"
INFER = ("/v2/models/{model_name}/infer", "/v2/models/{model_name}/versions/{model_version}/infer")


def _config() -> SchemathesisConfig:
    return SchemathesisConfig.from_dict({
        "seed": 15,
        "generation": {"max-examples": 25},
        "auth": {"openapi": {"operatorToken": {"bearer": ADMIN}}},
        # Most cases reach a real model and a real variant; the coverage phase still sends names it makes up.
        "parameters": {"model_name": "digits", "model_version": "int8"},
        "operations": [{
            "include-path-regex": "/infer$",
            # A V2 inference body is valid or not against the model's signature (GET /v2/models/{name}), which no
            # static document states: a body that fits the generic V2 schema but not the model is a 400 (documented).
            "checks": {"positive_data_acceptance": {
                "expected-statuses": ["2xx", "400", "401", "403", "404", "503"]}},
        }, {
            "include-path-regex": "/ready$",
            # Not ready is a documented 503 (a version known but not in the current split, or that cannot serve), as
            # KServe answers; any other 5xx still fails.
            "checks": {"not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "503"]}},
        }],
    })


@pytest.fixture(scope="module")
def router_url(tmp_path_factory: pytest.TempPathFactory, digits_paths: dict[str, Path]) -> Iterator[str]:
    home = tmp_path_factory.mktemp("router-openapi")
    engine = create_engine(f"sqlite:///{home / 'tokens.db'}")
    Base.metadata.create_all(engine)  # the api_tokens table a token is looked up in: another token is a 403
    settings_ = router_settings(home, admin_token=ADMIN, router_max_body_bytes=1024 * 1024,
                                router_read_timeout_s=5.0)
    with running_app(settings_, MemoryChannel(), digits_source(digits_paths),
                     token_sessions=sessionmaker(engine)) as app, served(app) as url:
        yield url
    engine.dispose()


DOCUMENT = Path(__file__).parents[2] / "router" / "openapi.json"
# Loaded at collection from the file (schemathesis' lazy `from_fixture` does not run on this pytest).
schema = schemathesis.openapi.from_path(DOCUMENT, config=_config())


@pytest.fixture(scope="module")
def router_schema() -> OpenApiSchema:
    return schema


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_the_router_answers_as_its_openapi_document_says(case: Case, router_url: str) -> None:  # type: ignore[type-arg]
    case.call_and_validate(base_url=router_url)


def _infer_case(router_schema: OpenApiSchema, path: str, body: bytes, headers: dict[str, str]) -> Case:
    operation = router_schema[path]["POST"]
    return operation.Case(path_parameters={"model_name": "digits", "model_version": "int8"}, body=body,
                          media_type="application/octet-stream" if "Inference-Header-Content-Length" in headers
                          else "application/json", headers=headers)


def test_answers_to_valid_inference_requests_match_the_document_in_both_encodings(
        router_url: str, router_schema: OpenApiSchema) -> None:
    rows, _ = digits_rows(2)
    as_json = orjson.dumps({"id": "fuzz-1", "inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 64],
                                                         "data": rows.reshape(-1).tolist()}]})
    blob = rows.astype(np.float32).tobytes()
    header = orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 64],
                                       "parameters": {"binary_data_size": len(blob)}}],
                           "parameters": {"binary_data_output": True}})
    binary = {"Inference-Header-Content-Length": str(len(header))}
    for path in INFER:
        forced = "versions" in path
        for body, headers in ((as_json, {}), (header + blob, binary)):
            case = _infer_case(router_schema, path, body, headers)
            # every check; with the token given explicitly, ignored_auth also sends it without one and with another
            response = case.call_and_validate(base_url=router_url, headers={"Authorization": f"Bearer {ADMIN}"})
            assert response.status_code == 200
            assert response.headers["x-modelroll-variant"] == ["int8" if forced else "baseline"]
        anonymous = _infer_case(router_schema, path, as_json, {}).call(base_url=router_url)
        if forced:
            assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"][0].startswith("Bearer")


def test_the_served_document_is_the_packaged_file(router_url: str) -> None:
    import httpx

    served_bytes = httpx.get(f"{router_url}/openapi.json").content
    packaged = DOCUMENT.read_bytes()
    assert served_bytes == packaged
    paths = set(orjson.loads(packaged)["paths"])
    assert {"/v2/health/live", "/v2/health/ready", "/v2/models/{model_name}", "/v2/models/{model_name}/infer",
            "/v1/feedback", "/metrics"} <= paths
