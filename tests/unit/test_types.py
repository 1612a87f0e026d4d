"""Domain types refuse bad values with a message that names the field and what is accepted."""

from __future__ import annotations

import re

import pytest

from modelroll.errors import InvalidInput
from modelroll.types import (
    DEFAULT_STEPS,
    Criteria,
    MemorySource,
    Phase,
    Role,
    RolloutSpec,
    Step,
    Variant,
    check_name,
)

SHA = "a" * 64


def test_default_criteria_are_the_research_reports_gates() -> None:
    c = Criteria()
    assert c.latency_reduction_min == 0.50
    assert c.memory_reduction_min == 0.60
    assert c.accuracy_drop_max == 0.02
    assert c.latency_ratio_max == pytest.approx(0.50)
    assert c.memory_ratio_max == pytest.approx(0.40)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"latency_reduction_min": -0.1}, "latency_reduction_min must be in [0.0, 1.0)"),
        ({"memory_reduction_min": 1.0}, "memory_reduction_min must be in [0.0, 1.0)"),
        ({"accuracy_drop_max": -0.01}, "accuracy_drop_max"),
        ({"error_rate_tolerance": 2}, "error_rate_tolerance"),
        ({"alpha": 0}, "alpha"),
        ({"alpha": 0.9}, "alpha"),
        ({"min_samples": 0}, "min_samples must be an integer >= 1"),
        ({"latency_reduction_min": "half"}, "must be a number"),
        ({"latency_reduction_min": float("nan")}, "must be a number"),
    ],
)
def test_criteria_refuse_out_of_range_values(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(InvalidInput) as err:
        Criteria(**kwargs)  # type: ignore[arg-type]
    assert needle in err.value.message


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"weight_pct": 140}, "weight_pct must be in [0.0, 100.0], got 140"),
        ({"weight_pct": -1}, "weight_pct"),
        ({"weight_pct": 5, "shadow": True}, "weight_pct must be 0"),
        ({"weight_pct": 0}, "must be a shadow step"),
        ({"weight_pct": 5, "min_duration_s": -1}, "min_duration_s must be >= 0"),
        ({"weight_pct": 5, "min_samples": -3}, "min_samples"),
        ({"weight_pct": 5, "min_duration_s": 60, "max_duration_s": 10}, "max_duration_s (10) must be >="),
    ],
)
def test_step_refuses_bad_values(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(InvalidInput) as err:
        Step(**kwargs)  # type: ignore[arg-type]
    assert needle in err.value.message


def test_steps_that_go_down_are_refused() -> None:
    with pytest.raises(InvalidInput, match=re.escape("weights must go up, got 5.0 after 25.0")):
        RolloutSpec("digits", "base", "int8", steps=(Step(25), Step(5)))


def test_shadow_after_traffic_is_refused() -> None:
    with pytest.raises(InvalidInput, match="shadow steps must come before"):
        RolloutSpec("digits", "base", "int8", steps=(Step(5), Step(0, shadow=True), Step(50)))


def test_only_shadow_steps_are_refused() -> None:
    with pytest.raises(InvalidInput, match="at least one traffic step"):
        RolloutSpec("digits", "base", "int8", steps=(Step(0, shadow=True),))


def test_empty_steps_and_same_variants_are_refused() -> None:
    with pytest.raises(InvalidInput, match="steps must not be empty"):
        RolloutSpec("digits", "base", "int8", steps=())
    with pytest.raises(InvalidInput, match="must differ"):
        RolloutSpec("digits", "base", "base")


def test_memory_source_is_live_by_default_offline_on_request_and_nothing_else() -> None:
    assert Criteria().memory_source is MemorySource.LIVE
    assert Criteria(memory_source="offline").memory_source is MemorySource.OFFLINE  # type: ignore[arg-type]
    with pytest.raises(InvalidInput) as err:
        Criteria(memory_source="estimate")  # type: ignore[arg-type]
    assert "memory_source must be one of ['live', 'offline'], got 'estimate'" in err.value.message
    spec = RolloutSpec("digits", "base", "int8", criteria=Criteria(memory_source=MemorySource.OFFLINE))
    assert spec.to_dict()["criteria"]["memory_source"] == "offline"
    assert RolloutSpec.from_dict(spec.to_dict()) == spec
    old = spec.to_dict()  # a spec stored before the field existed reads as live
    del old["criteria"]["memory_source"]
    assert RolloutSpec.from_dict(old).criteria.memory_source is MemorySource.LIVE


def test_spec_round_trips_through_dict() -> None:
    spec = RolloutSpec("digits", "base", "int8", criteria=Criteria(accuracy_drop_max=0.01))
    assert RolloutSpec.from_dict(spec.to_dict()) == spec
    assert spec.steps == DEFAULT_STEPS


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"model": "digits", "baseline": "b"}, "needs 'candidate'"),
        ({"model": "digits", "baseline": "b", "candidate": "c", "colour": 1}, "unknown rollout field(s) ['colour']"),
        ({"model": "digits", "baseline": "b", "candidate": "c", "steps": "fast"}, "steps must be a list"),
        ({"model": "digits", "baseline": "b", "candidate": "c", "steps": [{"weight": 5}]}, "unknown step 0 field(s)"),
        ({"model": "digits", "baseline": "b", "candidate": "c", "criteria": {"alpha": 0.7}}, "alpha"),
        ({"model": "digits", "baseline": "b", "candidate": "c", "on_deadline": "promote"},
         "on_deadline must be one of"),
        ({"model": "Bad Name", "baseline": "b", "candidate": "c"}, "is not a valid name"),
        ([1, 2], "must be an object"),
    ],
)
def test_spec_from_dict_explains_bad_input(data: object, needle: str) -> None:
    with pytest.raises(InvalidInput) as err:
        RolloutSpec.from_dict(data)  # type: ignore[arg-type]
    assert needle in err.value.message


def test_variant_validation() -> None:
    Variant("digits", "base", Role.BASELINE, SHA)
    with pytest.raises(InvalidInput, match="needs a parent"):
        Variant("digits", "int8", Role.CANDIDATE, SHA)
    with pytest.raises(InvalidInput, match="64 lowercase hex"):
        Variant("digits", "base", Role.BASELINE, "xyz")
    with pytest.raises(InvalidInput, match="not a valid name"):
        check_name("model", "../etc")


def test_terminal_phases() -> None:
    assert Phase.PROMOTED.terminal and Phase.ROLLED_BACK.terminal
    assert not Phase.PAUSED.terminal and not Phase.PROGRESSING.terminal
