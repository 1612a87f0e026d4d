"""POST /v1/apply (declarative documents, YAML or JSON) and GET /v1/rollouts/{ref}/document (a rollout printed back
as one). The logic is in controller/apply.py; the document's format in modelroll/manifest.py."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError

from controller.api import Ctx, Operator, Viewer
from controller.apply import Applied, apply_rollout, document_of, find
from modelroll import manifest
from modelroll.apply_model import apply_model
from modelroll.artifacts import ArtifactStore
from modelroll.errors import Conflict, InvalidInput
from modelroll.inputs import InputPolicy

router = APIRouter(tags=["apply"])

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")
ACCEPTED_TYPES = (*YAML_TYPES, "application/json", "text/plain")


def _document_schema() -> dict[str, Any]:
    """One document of either kind, as modelroll/schemas/*-v1.json state them (YAML may hold several)."""
    return {"oneOf": [copy.deepcopy({k: v for k, v in manifest.schema(kind).items() if not k.startswith("$")})
                      for kind in manifest.KINDS]}


# Rules a JSON Schema cannot state (the target must exist, files only inside the input root, how steps go together):
# a schema-valid document that breaks one is a 400 whose message says which.
RULES_BEYOND_THE_SCHEMA = (
    "is not registered", "is not a variant of model", "must name an .onnx file inside the controller's input root",
    "weights must go up", "shadow steps must come before", "at least one traffic step", "must be a shadow step",
    "serves no candidate traffic", "must be >= min_duration_s", "timeout_s bounds the wait", "needs timeout_s",
    "must differ", "is given twice", "is named twice", "is the name spec.path registers", "is not a valid ONNX model",
)


async def _raw_body(request: Request) -> bytes:
    return await request.body()


def _check_content_type(request: Request) -> None:
    given = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if given and given not in ACCEPTED_TYPES:
        raise InvalidInput(f"Content-Type {given!r} is not accepted: send the document as application/yaml or "
                           "application/json")


@router.post(
    "/apply", summary="Apply declarative documents (Rollout, Model): create, change what may change, or nothing",
    description=(
        "The body is one or more documents (YAML, `---` between them, or JSON) as `modelroll apply -f` sends "
        "them; the JSON Schemas are `modelroll/schemas/rollout-v1.json` and `model-v1.json`. A rollout is found by "
        "metadata.name: applying the same document again changes nothing; a changed document changes the steps not "
        "yet begun and (before any verdict) the criteria, and refuses other changes (409, naming the field and "
        "line). A Model document (admin) names its ONNX files by paths relative to the controller's input root "
        "(MODELROLL_INPUT_DIR) only. Every error names the field and its line; nothing is applied unless every "
        "document applies."),
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": _document_schema()},
        "application/yaml": {"schema": _document_schema()}}}})
def apply(ctx: Ctx, who: Operator, request: Request, body: Annotated[bytes, Depends(_raw_body)],
          dry_run: Annotated[bool, Query(description="Check and report, change nothing.")] = False,
          kinds: Annotated[list[Literal["Rollout", "Model"]] | None, Query(description=(
              "Apply only these kinds; the others are checked and skipped (the CLI applies kind Model "
              "itself)."))] = None) -> dict[str, Any]:
    _check_content_type(request)
    documents = manifest.parse(body)
    wanted = set(kinds or manifest.KINDS)
    if any(isinstance(doc, manifest.ModelDocument) and "Model" in wanted for doc in documents):
        who.require("admin")  # a new model serves at once
    now = datetime.now(UTC)
    policy = InputPolicy.within(ctx.settings.effective_input_dir)
    store = ArtifactStore.from_settings(ctx.settings)
    results: list[Applied] = []
    session = ctx.session_factory()
    try:
        for doc in documents:
            if doc.kind not in wanted:
                results.append(Applied(doc.kind, doc.name, "skipped"))
            elif isinstance(doc, manifest.RolloutDocument):
                results.append(apply_rollout(session, who, doc, now))
            else:
                done = apply_model(session, store, doc, policy=policy, actor=who.actor, dry_run=dry_run)
                results.append(Applied("Model", done.name, done.action, done.changed))
                session.flush()
        if dry_run:
            session.rollback()
        else:
            session.commit()
    except (StaleDataError, IntegrityError):
        session.rollback()
        raise Conflict("a rollout of these documents changed (or was applied by someone else) while applying: "
                       "apply again") from None
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
    return {"dry_run": dry_run, "results": [r.to_dict() for r in results]}


def _printed_schema() -> dict[str, Any]:
    """The Rollout document as printed: a rollout created without a document (POST /v1/rollouts) has no name."""
    schema: dict[str, Any] = copy.deepcopy({k: v for k, v in manifest.schema("Rollout").items()
                                            if not k.startswith("$")})
    schema["properties"]["metadata"].pop("required", None)
    schema["required"] = [*schema["required"], "status"]
    return schema


@router.get("/rollouts/{ref}/document", summary="A rollout as the document `apply` takes (spec) with its status",
            responses={200: {"content": {"application/json": {"schema": _printed_schema()},
                                         "application/yaml": {"schema": _printed_schema()}}}})
def document(ref: Annotated[str, Path(min_length=1, max_length=63, description="Rollout id or metadata.name.")],
             ctx: Ctx, _: Viewer,
             output: Annotated[Literal["json", "yaml"], Query(alias="format")] = "json") -> Response:
    with ctx.session_factory() as session:
        doc = document_of(session, find(session, ref))
    if output == "yaml":
        return PlainTextResponse(manifest.to_yaml([doc]), media_type="application/yaml")
    return JSONResponse(doc)
