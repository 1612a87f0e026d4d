"""Declarative documents (`apiVersion: modelroll/v1`): a Rollout or a Model, checked against the JSON Schema that
ships in `modelroll/schemas/` and then against the domain types, every error with the line of its field.

`parse` turns a YAML or JSON text into typed documents (nothing is applied here); `rollout_document` turns a stored
rollout back into the document `modelroll get rollout N -o yaml` prints and `apply` takes again unchanged.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import jsonschema
import yaml

from modelroll.errors import InvalidInput
from modelroll.types import (
    DEFAULT_STEPS,
    NOTIFY_EVENTS,
    Criteria,
    DeadlinePolicy,
    RolloutSpec,
    Step,
    criteria_from_dict,
    criteria_to_dict,
    step_from_dict,
    step_to_dict,
    steps_problem,
)
from modelroll.yaml_lines import FieldPath, Located, dotted, load_documents

API_VERSION = "modelroll/v1"
KINDS = ("Rollout", "Model")
MAX_ERRORS = 5


@functools.cache
def schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of a kind's documents (modelroll/schemas/<kind>-v1.json)."""
    text = resources.files("modelroll").joinpath("schemas", f"{kind.lower()}-v1.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@functools.cache
def _validator(kind: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema(kind))


@dataclass(frozen=True, slots=True)
class RolloutDocument:
    """A Rollout document, checked: what to roll out and how; `baseline` None means what serves the model now."""

    name: str
    model: str
    candidate: str
    baseline: str | None = None
    force: bool = False
    steps: tuple[Step, ...] = DEFAULT_STEPS
    criteria: Criteria = field(default_factory=Criteria)
    on_deadline: DeadlinePolicy = DeadlinePolicy.HOLD
    notify_events: tuple[str, ...] = NOTIFY_EVENTS
    located: Located | None = field(default=None, compare=False, repr=False)

    kind = "Rollout"

    def spec(self, baseline: str) -> RolloutSpec:
        """The rollout spec against `baseline` (what serves, when the document names none)."""
        if self.baseline is not None and self.baseline != baseline:
            raise self.error(("spec", "baseline"), f"rollouts start from what serves: model {self.model!r} is "
                                                   f"served by {baseline!r}, not {self.baseline!r}")
        try:
            return RolloutSpec(model=self.model, baseline=baseline, candidate=self.candidate, steps=self.steps,
                               criteria=self.criteria, on_deadline=self.on_deadline, notify_events=self.notify_events)
        except InvalidInput as exc:
            raise self.error(("spec", "candidate"), exc.message) from None

    def at(self, path: FieldPath) -> str:
        return self.located.at(path) if self.located is not None else dotted(path)

    def error(self, path: FieldPath, message: str) -> InvalidInput:
        return InvalidInput(f"{self.at(path)}: {message}")


@dataclass(frozen=True, slots=True)
class VariantDocument:
    name: str
    path: str
    parent: str = "baseline"


@dataclass(frozen=True, slots=True)
class ModelDocument:
    """A Model document, checked: register the model from `path` (if given) and each variant from its file."""

    name: str
    path: str | None = None
    description: str = ""
    variants: tuple[VariantDocument, ...] = ()
    located: Located | None = field(default=None, compare=False, repr=False)

    kind = "Model"

    def at(self, path: FieldPath) -> str:
        return self.located.at(path) if self.located is not None else dotted(path)

    def error(self, path: FieldPath, message: str) -> InvalidInput:
        return InvalidInput(f"{self.at(path)}: {message}")


Document = RolloutDocument | ModelDocument


def parse(text: str | bytes, source: str = "") -> list[Document]:
    """Every document of the text, checked; raises InvalidInput naming the field and line of each problem (up to
    five), or PayloadTooLarge over 1 MiB. Nothing is looked up in the database here."""
    located = load_documents(text, source)
    if not located:
        raise InvalidInput(f"{source or 'the body'} holds no document: give one like `apiVersion: {API_VERSION}`, "
                           f"`kind: Rollout`, `metadata: {{name: ...}}`, `spec: {{model: ..., candidate: ...}}`")
    return [_document(doc) for doc in located]


def _document(doc: Located) -> Document:
    data = doc.data
    if not isinstance(data, Mapping):
        raise doc.error((), f"a document must be a mapping with apiVersion, kind, metadata and spec, got "
                            f"{type(data).__name__}")
    version = data.get("apiVersion")
    if version != API_VERSION:
        what = "is missing" if version is None else f"{version!r} is not supported"
        raise doc.error(("apiVersion",), f"{what}: use apiVersion: {API_VERSION}")
    kind = data.get("kind")
    if kind not in KINDS:
        what = "is missing" if kind is None else f"{kind!r} is not a kind modelroll knows"
        raise doc.error(("kind",), f"{what}: use one of {', '.join(KINDS)}")
    _check_schema(doc, str(kind))
    return _rollout(doc) if kind == "Rollout" else _model(doc)


def _check_schema(doc: Located, kind: str) -> None:
    problems: list[tuple[int, str]] = []
    for error in _validator(kind).iter_errors(doc.data):
        for path, message in _explain(error):
            problems.append((doc.line_of(path), f"{doc.at(path)}: {message}"))
    if problems:
        problems.sort()
        shown = [text for _, text in problems[:MAX_ERRORS]]
        more = f" (and {len(problems) - MAX_ERRORS} more)" if len(problems) > MAX_ERRORS else ""
        raise InvalidInput("; ".join(shown) + more + f" (the schema: modelroll/schemas/{kind.lower()}-v1.json)")


_TYPES = {"number": "a number", "integer": "a whole number", "string": "text", "boolean": "true or false",
          "object": "a mapping", "array": "a list", "null": "null"}


def _explain(error: jsonschema.ValidationError) -> list[tuple[FieldPath, str]]:
    """The schema's complaint as (field path, message) pairs, each message saying what is accepted."""
    path: FieldPath = tuple(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        accepted = sorted(error.schema.get("properties", {}))
        return [((*path, key), f"unknown field; accepted: {', '.join(accepted)}")
                for key in error.instance if key not in accepted]
    if error.validator == "required":
        missing = str(error.message).split("'")[1] if "'" in str(error.message) else "?"
        return [(path, f"{missing!r} is required")]
    if error.validator == "type":
        wanted = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        words = " or ".join(_TYPES.get(str(t), str(t)) for t in wanted)
        return [(path, f"must be {words}, got {error.instance!r}")]
    if error.validator == "enum":
        return [(path, f"{error.instance!r} is not accepted: use one of {', '.join(map(str, error.validator_value))}")]
    if error.validator == "anyOf" and "x-anyOf-message" in error.schema:
        return [(path, str(error.schema["x-anyOf-message"]))]
    bounds = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
    if error.validator in bounds:
        return [(path, f"must be {bounds[str(error.validator)]} {error.validator_value}, got {error.instance!r}")]
    if error.validator == "pattern":
        return [(path, f"{error.instance!r} is not a valid name: use 1-63 lowercase letters, digits, '.', '_' or "
                       "'-', starting with a letter or digit")]
    return [(path, str(error.message))]


def _rollout(doc: Located) -> RolloutDocument:
    spec: Mapping[str, Any] = doc.data["spec"]
    steps = DEFAULT_STEPS
    if "steps" in spec:
        built = []
        for index, raw in enumerate(spec["steps"]):
            try:
                built.append(step_from_dict(raw, index))
            except InvalidInput as exc:
                raise doc.error(("spec", "steps", index), exc.message.removeprefix(f"step {index}: ")) from None
        steps = tuple(built)
        problem = steps_problem(steps)
        if problem is not None:
            at, why = problem
            raise doc.error(("spec", "steps") if at is None else ("spec", "steps", at), why)
    try:
        criteria = criteria_from_dict(spec.get("criteria") or {})
    except InvalidInput as exc:
        raise doc.error(("spec", "criteria"), exc.message) from None
    events = spec.get("notifications", {}).get("events", NOTIFY_EVENTS)
    out = RolloutDocument(
        name=doc.data["metadata"]["name"], model=spec["model"], candidate=spec["candidate"],
        baseline=spec.get("baseline"), force=bool(spec.get("force", False)), steps=steps, criteria=criteria,
        on_deadline=DeadlinePolicy(spec.get("on_deadline", "hold")),
        notify_events=tuple(e for e in NOTIFY_EVENTS if e in events), located=doc)
    if out.baseline == out.candidate:
        raise doc.error(("spec", "candidate"), f"baseline and candidate must differ, both are {out.candidate!r}")
    return out


def _model(doc: Located) -> ModelDocument:
    spec: Mapping[str, Any] = doc.data["spec"]
    variants = tuple(VariantDocument(name=v["name"], path=v["path"], parent=v.get("parent", "baseline"))
                     for v in spec.get("variants", []))
    seen: set[str] = set()
    for index, variant in enumerate(variants):
        if variant.name in seen or variant.name == "baseline":
            why = "is named twice" if variant.name in seen else "is the name spec.path registers"
            raise doc.error(("spec", "variants", index, "name"), f"variant {variant.name!r} {why}")
        seen.add(variant.name)
    if spec.get("path") is None and not variants:
        raise doc.error(("spec",), "give path (the model's ONNX file) or variants (more variants from files)")
    return ModelDocument(name=doc.data["metadata"]["name"], path=spec.get("path"),
                         description=spec.get("description", ""), variants=variants, located=doc)


def rollout_document(name: str | None, spec: RolloutSpec, *, forced: bool = False,
                     status: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The document of a stored rollout, as `get -o yaml` prints it; applying it again changes nothing."""
    steps = []
    for step in spec.steps:
        out = step_to_dict(step)
        if not step.approval:
            for key in ("approval", "timeout_s", "on_timeout"):
                out.pop(key)
        steps.append(out)
    body: dict[str, Any] = {"model": spec.model, "candidate": spec.candidate, "baseline": spec.baseline}
    if forced:
        body["force"] = True
    body.update({"steps": steps, "criteria": criteria_to_dict(spec.criteria), "on_deadline": spec.on_deadline.value,
                 "notifications": {"events": list(spec.notify_events)}})
    document: dict[str, Any] = {"apiVersion": API_VERSION, "kind": "Rollout",
                                "metadata": {"name": name} if name else {}, "spec": body}
    if status is not None:
        document["status"] = dict(status)
    return document


def to_yaml(documents: Sequence[Mapping[str, Any]]) -> str:
    return str(yaml.safe_dump_all([dict(d) for d in documents], sort_keys=False, default_flow_style=False,
                                  allow_unicode=True))
