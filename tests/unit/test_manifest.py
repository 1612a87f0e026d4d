"""Declarative documents: the schema, the line of every bad field, YAML bombs and size limits, the printed document
applied again unchanged, and one criteria vocabulary for flags, documents and the API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelroll import manifest
from modelroll.errors import InvalidInput, PayloadTooLarge
from modelroll.inputs import InputPolicy
from modelroll.manifest import ModelDocument, RolloutDocument, parse, rollout_document, to_yaml
from modelroll.types import (
    CRITERIA_ALIASES,
    NOTIFY_EVENTS,
    ApprovalTimeout,
    Criteria,
    RolloutSpec,
    Step,
    criteria_from_dict,
    criteria_option,
    parse_criteria_pairs,
)
from modelroll.yaml_lines import MAX_DOCUMENT_BYTES, load_documents
from optimizer.cli import parse_gates

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

GOOD = """\
apiVersion: modelroll/v1
kind: Rollout
metadata:
  name: digits-int8
spec:
  model: digits
  candidate: int8
  steps:
    - weight_pct: 5
    - weight_pct: 50
      approval: true
      timeout_s: 600
    - weight_pct: 100
  criteria:
    latency: 0.3
"""


def refused(text: str, source: str = "r.yaml") -> str:
    with pytest.raises(InvalidInput) as caught:
        parse(text, source)
    return caught.value.message


def test_both_examples_are_valid_rollout_documents() -> None:
    plain = parse((EXAMPLES / "rollout.yaml").read_text(), "rollout.yaml")
    approval = parse((EXAMPLES / "rollout-approval.yaml").read_text(), "rollout-approval.yaml")
    assert [d.name for d in plain + approval] == ["digits-int8", "digits-int8-approved"]
    assert isinstance(approval[0], RolloutDocument)
    assert [s.approval for s in approval[0].steps] == [False, False, True, False]
    assert approval[0].steps[2].timeout_s == 86400 and approval[0].steps[2].on_timeout is ApprovalTimeout.ROLLBACK


def test_a_good_document_becomes_the_spec_with_criteria_under_their_field_names() -> None:
    [doc] = parse(GOOD)
    assert isinstance(doc, RolloutDocument) and doc.baseline is None and not doc.force
    spec = doc.spec("fp32")
    assert spec.criteria == Criteria(latency_reduction_min=0.3)
    assert spec.steps[1] == Step(50, approval=True, timeout_s=600)
    assert spec.notify_events == NOTIFY_EVENTS


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("  candidate: int8\n", "  candidate: int8\n  colour: blue\n",
     "r.yaml:8: spec.colour: unknown field; accepted: baseline, candidate, criteria, force, model"),
    ("    - weight_pct: 5\n", "    - weight_pct: lots\n",
     "r.yaml:9: spec.steps[0].weight_pct: must be a number, got 'lots'"),
    ("    - weight_pct: 5\n", "    - weight_pct: 60\n",
     "r.yaml:10: spec.steps[1]: weights must go up, got 50.0 after 60.0"),
    ("      timeout_s: 600\n", "      timeout_s: -5\n", "r.yaml:12: spec.steps[1].timeout_s: must be > 0, got -5"),
    ("      approval: true\n", "", "r.yaml:10: spec.steps[1]: timeout_s bounds the wait for an approval: it needs "
                                   "approval: true"),
    ("  model: digits\n", "  model: Digits\n", "r.yaml:6: spec.model: 'Digits' is not a valid name"),
    ("  model: digits\n", "", "r.yaml:5: spec: 'model' is required"),
    ("  name: digits-int8\n", "  name: digits-int8\n  name: again\n", "r.yaml:5: metadata.name is given twice"),
    ("    latency: 0.3\n", "    latency: 1.5\n", "r.yaml:15: spec.criteria.latency: must be < 1, got 1.5"),
    ("    latency: 0.3\n", "    latency: 0.3\n    latency_reduction_min: 0.4\n",
     "r.yaml:14: spec.criteria: criteria: 'latency_reduction_min' is given twice, as 'latency_reduction_min' and as "
     "its short name 'latency'"),
    ("kind: Rollout\n", "kind: Deployment\n", "r.yaml:2: kind: 'Deployment' is not a kind modelroll knows"),
    ("apiVersion: modelroll/v1\n", "apiVersion: modelroll/v2\n", "r.yaml:1: apiVersion: 'modelroll/v2' is not "
                                                                 "supported: use apiVersion: modelroll/v1"),
    ("  candidate: int8\n", "  candidate: int8\n  baseline: int8\n",
     "r.yaml:7: spec.candidate: baseline and candidate must differ"),
    ("  criteria:\n", "  notifications: {events: [paged]}\n  criteria:\n",
     "r.yaml:14: spec.notifications.events[0]: 'paged' is not accepted: use one of started"),
])
def test_each_bad_field_is_named_with_its_line(old: str, new: str, expected: str) -> None:
    assert old in GOOD
    assert expected in refused(GOOD.replace(old, new, 1))


def test_several_problems_are_reported_together_in_line_order() -> None:
    message = refused(GOOD.replace("  candidate: int8\n", "  candidate: 8\n  colour: blue\n")
                      .replace("weight_pct: 5", "weight_pct: -1"))
    assert message.index("r.yaml:7: spec.candidate: must be text") < message.index("r.yaml:8: spec.colour") \
        < message.index("r.yaml:10: spec.steps[0].weight_pct: must be >= 0, got -1")


def test_a_yaml_bomb_is_refused_before_it_expands() -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    message = refused("\n".join(levels) + "\n")
    assert "a YAML bomb is refused" in message and "anchors and aliases" in message


def test_a_self_referring_alias_and_deep_nesting_are_refused() -> None:
    assert "nests deeper than 32 levels" in refused("a: &a [*a]\n")
    assert "nests deeper than 32 levels" in refused("a: " + "[" * 40 + "]" * 40 + "\n")


def test_a_document_over_1_mib_is_refused_unread() -> None:
    with pytest.raises(PayloadTooLarge, match="over the 1048576 bytes"):
        parse(GOOD + "#" * MAX_DOCUMENT_BYTES)


def test_python_tags_syntax_errors_and_non_text_keys_are_refused_with_the_line() -> None:
    python = refused("a: 1\nb: !!python/object:os.system x\n")
    assert "r.yaml:2: not valid YAML: could not determine a constructor" in python
    assert "r.yaml:3: not valid YAML: while parsing a flow sequence" in refused("a: 1\nb: [1\n")
    assert "key 'on' is read as True" in refused("on: push\n")
    assert "holds no document" in refused("# nothing\n")
    assert "must be a mapping" in refused("- 1\n")


def test_json_bodies_parse_with_their_lines() -> None:
    body = json.dumps({"apiVersion": "modelroll/v1", "kind": "Rollout", "metadata": {"name": "x"},
                       "spec": {"model": "digits", "candidate": "int8", "steps": [{"weight_pct": -3}]}}, indent=1)
    message = refused(body, "")
    assert message.startswith("line ") and "spec.steps[0].weight_pct: must be >= 0, got -3" in message


def test_several_documents_in_one_file() -> None:
    model = "apiVersion: modelroll/v1\nkind: Model\nmetadata: {name: digits}\nspec: {path: digits.onnx}\n"
    docs = parse(model + "---\n" + GOOD)
    assert [type(d) for d in docs] == [ModelDocument, RolloutDocument]
    assert docs[0].name == "digits" and docs[0].path == "digits.onnx"  # type: ignore[union-attr]
    assert "r.yaml:4: spec: give path" in refused(model.replace("spec: {path: digits.onnx}", "spec: {}"))


def test_the_printed_document_applies_back_to_the_same_spec() -> None:
    spec = parse(GOOD)[0].spec("fp32")  # type: ignore[union-attr]
    printed = to_yaml([rollout_document("digits-int8", spec, status={"id": 3, "phase": "shadow"})])
    [again] = parse(printed)
    assert isinstance(again, RolloutDocument) and again.spec("fp32") == spec
    assert "approval: true" in printed and printed.count("approval: ") == 1  # only the approval step says so


def test_the_shipped_schema_matches_the_domain_types() -> None:
    rollout = manifest.schema("Rollout")["properties"]["spec"]["properties"]
    assert set(rollout["steps"]["items"]["properties"]) == set(Step.__dataclass_fields__)
    assert set(rollout["criteria"]["properties"]) == set(Criteria.__dataclass_fields__) | set(CRITERIA_ALIASES)
    assert rollout["notifications"]["properties"]["events"]["items"]["enum"] == list(NOTIFY_EVENTS)
    assert set(RolloutSpec.from_dict({"model": "m", "baseline": "a", "candidate": "b"}).to_dict()) - {
        "baseline"} <= set(rollout)


def test_one_criteria_vocabulary_for_flags_documents_and_the_api() -> None:
    wanted = Criteria(latency_reduction_min=0.3, error_rate_tolerance=0.02)
    assert parse_gates("latency=0.3,errors=0.02") == wanted
    assert parse_criteria_pairs("latency_reduction_min=0.3, error_rate_tolerance=0.02", "--criteria") == wanted
    assert criteria_option('{"latency": 0.3, "errors": 0.02}', "--criteria") == {
        "latency_reduction_min": 0.3, "error_rate_tolerance": 0.02}
    assert criteria_option("latency=0.3,memory_source=offline", "--criteria") == {
        "latency_reduction_min": 0.3, "memory_source": "offline"}
    assert criteria_from_dict({"accuracy": 0.01}) == Criteria(accuracy_drop_max=0.01)
    with pytest.raises(InvalidInput, match="--criteria: cannot read 'speed=2'; write name=value with a name in"):
        criteria_option("speed=2", "--criteria")
    with pytest.raises(InvalidInput, match="--criteria is neither JSON nor name=value pairs"):
        criteria_option("{latency: 1}", "--criteria")


def test_approval_step_fields_are_checked() -> None:
    with pytest.raises(InvalidInput, match="timeout_s must be a number of seconds > 0, got -5"):
        Step(10, approval=True, timeout_s=-5)
    with pytest.raises(InvalidInput, match="timeout_s bounds the wait for an approval"):
        Step(10, timeout_s=60)
    with pytest.raises(InvalidInput, match="on_timeout 'advance' needs timeout_s"):
        Step(10, approval=True, on_timeout=ApprovalTimeout.ADVANCE)
    with pytest.raises(InvalidInput, match="on_timeout must be one of"):
        Step(10, approval=True, timeout_s=5, on_timeout="later")  # type: ignore[arg-type]


def test_a_model_document_names_files_only_inside_the_input_root_over_the_api(tmp_path: Path) -> None:
    policy = InputPolicy.within(tmp_path)
    with pytest.raises(InvalidInput, match=r"must name an \.onnx file inside the controller's input root"):
        policy.resolve("spec.path", "/etc/passwd.onnx", suffix=".onnx")
    with pytest.raises(InvalidInput, match=r"digits/model\.onnx"):
        policy.resolve("spec.path", "../x.onnx", suffix=".onnx")


def test_lines_point_at_the_key_of_a_nested_field() -> None:
    [doc] = load_documents("a:\n  b:\n    - c: 1\n")
    assert doc.line_of(("a", "b")) == 2 and doc.line_of(("a", "b", 0, "c")) == 3 and doc.line_of(("a", "z")) == 1


def test_a_json_number_in_exponent_form_is_a_number_as_json_says() -> None:
    from modelroll.yaml_lines import load_documents

    [doc] = load_documents('{"alpha": 1e-06, "quoted": "1e-06", "big": -3E+2}')
    assert doc.data == {"alpha": 1e-06, "quoted": "1e-06", "big": -300.0}
