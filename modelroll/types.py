"""Domain types shared by every service: variants, criteria, steps, rollout specs, verdicts.

All are frozen dataclasses validated on construction; an invalid value raises
`InvalidInput` with a message that names the field, the value and what is accepted.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelroll.errors import InvalidInput

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


def check_name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise InvalidInput(
            f"{kind} {value!r} is not a valid name: use 1-63 lowercase letters, digits, "
            "'.', '_' or '-', starting with a letter or digit"
        )
    return value


def _check_fraction(name: str, value: float, *, low: float = 0.0, high: float = 1.0,
                    high_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise InvalidInput(f"{name} must be a number, got {value!r}")
    too_high = value >= high if high_open else value > high
    if value < low or too_high:
        bracket = ")" if high_open else "]"
        raise InvalidInput(f"{name} must be in [{low}, {high}{bracket}, got {value}")
    return float(value)


class Role(enum.StrEnum):
    BASELINE = "baseline"
    CANDIDATE = "candidate"


class Phase(enum.StrEnum):
    PENDING = "pending"
    SHADOW = "shadow"
    PROGRESSING = "progressing"
    PAUSED = "paused"
    WAITING_APPROVAL = "waiting_approval"  # an approval step's criteria passed: an operator approves to go on
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_PHASES


TERMINAL_PHASES = frozenset({Phase.PROMOTED, Phase.ROLLED_BACK, Phase.ABORTED, Phase.FAILED})


class Verdict(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    UNDECIDED = "undecided"


class MemorySource(enum.StrEnum):
    """What the memory criterion decides on.

    live: the routers' exact per-variant readings (a runner that cannot measure its model's own memory
    leaves the criterion undecided); offline: the optimizer's figure for each variant, measured in a fresh
    process, for routers whose runner cannot measure (inline, remote).
    """

    LIVE = "live"
    OFFLINE = "offline"


class DeadlinePolicy(enum.StrEnum):
    """What to do when a step's max duration passes with a criterion still undecided."""

    HOLD = "hold"
    ROLLBACK = "rollback"


class ApprovalTimeout(enum.StrEnum):
    """What an approval step does when nobody approved within its `timeout_s`."""

    ROLLBACK = "rollback"
    ADVANCE = "advance"


# The events a rollout can notify (the webhook), by the kind of the event it records.
NOTIFY_EVENTS: tuple[str, ...] = (
    "started", "advanced", "deadline", "paused", "resumed", "weight_set", "approval_needed", "approved",
    "promoted", "override_promoted", "rolled_back", "aborted", "failed",
)

# One vocabulary for criteria and gates: the Criteria field names, which every input (CLI flags, spec documents,
# the API) also accepts under these short names; outputs always use the field names.
CRITERIA_ALIASES: Mapping[str, str] = {
    "latency": "latency_reduction_min",
    "memory": "memory_reduction_min",
    "accuracy": "accuracy_drop_max",
    "errors": "error_rate_tolerance",
}


@dataclass(frozen=True, slots=True)
class Variant:
    """A servable version of a model; candidates record the recipe that built them."""

    model: str
    name: str
    role: Role
    artifact_sha256: str
    recipe: tuple[str, ...] = ()
    parent: str | None = None

    def __post_init__(self) -> None:
        check_name("model", self.model)
        check_name("variant", self.name)
        if not re.fullmatch(r"[0-9a-f]{64}", self.artifact_sha256):
            raise InvalidInput(f"artifact_sha256 must be 64 lowercase hex digits, got {self.artifact_sha256!r}")
        if self.role is Role.CANDIDATE and self.parent is None:
            raise InvalidInput(f"candidate {self.name!r} needs a parent variant (its baseline)")


@dataclass(frozen=True, slots=True)
class Criteria:
    """Success criteria; defaults are the research report's gates.

    Reductions and drops are fractions: 0.5 = 50 % lower, 0.02 = 2 points.
    """

    latency_reduction_min: float = 0.50
    memory_reduction_min: float = 0.60
    accuracy_drop_max: float = 0.02
    error_rate_tolerance: float = 0.01
    alpha: float = 0.05
    min_samples: int = 200
    memory_source: MemorySource = MemorySource.LIVE

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "memory_source", MemorySource(self.memory_source))
        except ValueError:
            raise InvalidInput(f"memory_source must be one of {[m.value for m in MemorySource]}, got "
                               f"{self.memory_source!r}: 'live' gates memory on the routers' exact readings, "
                               "'offline' on the optimizer's figure") from None
        _check_fraction("latency_reduction_min", self.latency_reduction_min, high_open=True)
        _check_fraction("memory_reduction_min", self.memory_reduction_min, high_open=True)
        _check_fraction("accuracy_drop_max", self.accuracy_drop_max)
        _check_fraction("error_rate_tolerance", self.error_rate_tolerance)
        _check_fraction("alpha", self.alpha, low=1e-6, high=0.5)
        if isinstance(self.min_samples, bool) or not isinstance(self.min_samples, int) or self.min_samples < 1:
            raise InvalidInput(f"min_samples must be an integer >= 1, got {self.min_samples!r}")

    @property
    def latency_ratio_max(self) -> float:
        return 1.0 - self.latency_reduction_min

    @property
    def memory_ratio_max(self) -> float:
        return 1.0 - self.memory_reduction_min


@dataclass(frozen=True, slots=True)
class Step:
    """One rollout step: the candidate's traffic share, or shadow (mirrored, 0 % served).

    An approval step (`approval`) runs like any other; once its criteria pass, the rollout waits for an operator's
    approval before the next step (or the promotion, after the last step). `timeout_s` bounds that wait, and
    `on_timeout` says what happens then: roll back (default) or go on as if approved.
    """

    weight_pct: float
    shadow: bool = False
    min_duration_s: float = 60.0
    min_samples: int = 200
    max_duration_s: float | None = None
    approval: bool = False
    timeout_s: float | None = None
    on_timeout: ApprovalTimeout = ApprovalTimeout.ROLLBACK

    def __post_init__(self) -> None:
        if not isinstance(self.approval, bool):
            raise InvalidInput(f"approval must be true or false, got {self.approval!r}")
        try:
            object.__setattr__(self, "on_timeout", ApprovalTimeout(self.on_timeout))
        except ValueError:
            raise InvalidInput(f"on_timeout must be one of {[p.value for p in ApprovalTimeout]}, got "
                               f"{self.on_timeout!r}") from None
        if self.timeout_s is not None:
            if isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, (int, float)) \
                    or not self.timeout_s > 0:
                raise InvalidInput(f"timeout_s must be a number of seconds > 0, got {self.timeout_s!r}")
            if not self.approval:
                raise InvalidInput("timeout_s bounds the wait for an approval: it needs approval: true")
        if self.on_timeout is not ApprovalTimeout.ROLLBACK and self.timeout_s is None:
            raise InvalidInput(f"on_timeout {self.on_timeout.value!r} needs timeout_s (and approval: true)")
        object.__setattr__(self, "weight_pct", _check_fraction("weight_pct", self.weight_pct, high=100.0))
        if self.shadow and self.weight_pct != 0:
            raise InvalidInput(
                f"a shadow step serves no candidate traffic: weight_pct must be 0, got {self.weight_pct}")
        if not self.shadow and self.weight_pct == 0:
            raise InvalidInput("a step with weight_pct 0 must be a shadow step (shadow: true)")
        if self.min_duration_s < 0:
            raise InvalidInput(f"min_duration_s must be >= 0, got {self.min_duration_s}")
        if isinstance(self.min_samples, bool) or not isinstance(self.min_samples, int) or self.min_samples < 0:
            raise InvalidInput(f"min_samples must be an integer >= 0, got {self.min_samples!r}")
        if self.max_duration_s is not None and self.max_duration_s < self.min_duration_s:
            raise InvalidInput(
                f"max_duration_s ({self.max_duration_s}) must be >= min_duration_s ({self.min_duration_s})"
            )


DEFAULT_STEPS: tuple[Step, ...] = (
    Step(weight_pct=0, shadow=True),
    Step(weight_pct=1),
    Step(weight_pct=5),
    Step(weight_pct=25),
    Step(weight_pct=50),
    Step(weight_pct=100),
)


def steps_problem(steps: Sequence[Step]) -> tuple[int | None, str] | None:
    """What breaks the schedule's order (the step's index, or None for the whole list; why), or None when nothing
    does: shadow steps first, then at least one traffic step, with weights going up."""
    if not steps:
        return None, "steps must not be empty: give at least one step, e.g. weight_pct 100"
    seen_traffic = False
    previous = 0.0
    for index, step in enumerate(steps):
        if step.shadow and seen_traffic:
            return index, "shadow steps must come before every traffic step"
        if not step.shadow:
            seen_traffic = True
            if step.weight_pct <= previous and index > 0 and not steps[index - 1].shadow:
                return index, f"weights must go up, got {step.weight_pct} after {previous}"
            previous = step.weight_pct
    if not seen_traffic:
        return None, "steps need at least one traffic step after the shadow steps"
    return None


def check_notify_events(events: Any) -> tuple[str, ...]:
    if isinstance(events, (str, bytes)) or not isinstance(events, Sequence):
        raise InvalidInput(f"notifications.events must be a list of event kinds, got {events!r}; accepted: "
                           f"{list(NOTIFY_EVENTS)}")
    unknown = [e for e in events if e not in NOTIFY_EVENTS]
    if unknown:
        raise InvalidInput(f"notifications.events: unknown event(s) {unknown}; accepted: {list(NOTIFY_EVENTS)}")
    return tuple(e for e in NOTIFY_EVENTS if e in events)  # one order, no duplicates


@dataclass(frozen=True, slots=True)
class RolloutSpec:
    """What an operator asks for: roll `candidate` out against `baseline` of `model`.

    `notify_events`: which of the rollout's events post to the controller's webhook (default: all of them).
    """

    model: str
    baseline: str
    candidate: str
    steps: tuple[Step, ...] = DEFAULT_STEPS
    criteria: Criteria = field(default_factory=Criteria)
    on_deadline: DeadlinePolicy = DeadlinePolicy.HOLD
    notify_events: tuple[str, ...] = NOTIFY_EVENTS

    def __post_init__(self) -> None:
        check_name("model", self.model)
        check_name("baseline", self.baseline)
        check_name("candidate", self.candidate)
        if self.baseline == self.candidate:
            raise InvalidInput(f"baseline and candidate must differ, both are {self.baseline!r}")
        problem = steps_problem(self.steps)
        if problem is not None:
            index, why = problem
            raise InvalidInput(why if index is None else f"step {index}: {why}")
        object.__setattr__(self, "notify_events", check_notify_events(self.notify_events))

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "baseline": self.baseline,
            "candidate": self.candidate,
            "steps": [step_to_dict(s) for s in self.steps],
            "criteria": criteria_to_dict(self.criteria),
            "on_deadline": self.on_deadline.value,
            "notifications": {"events": list(self.notify_events)},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutSpec:
        if not isinstance(data, Mapping):
            raise InvalidInput(f"a rollout spec must be an object, got {type(data).__name__}")
        known = {"model", "baseline", "candidate", "steps", "criteria", "on_deadline", "notifications"}
        unknown = set(data) - known
        if unknown:
            raise InvalidInput(f"unknown rollout field(s) {sorted(unknown)}; accepted: {sorted(known)}")
        for required in ("model", "baseline", "candidate"):
            if required not in data:
                raise InvalidInput(f"rollout spec needs {required!r}")
        raw_steps = data.get("steps")
        steps = DEFAULT_STEPS if raw_steps is None else tuple(
            step_from_dict(s, i) for i, s in enumerate(_seq("steps", raw_steps)))
        criteria = criteria_from_dict(data.get("criteria") or {})
        try:
            on_deadline = DeadlinePolicy(data.get("on_deadline", "hold"))
        except ValueError:
            raise InvalidInput(
                f"on_deadline must be one of {[p.value for p in DeadlinePolicy]}, got {data.get('on_deadline')!r}"
            ) from None
        return cls(
            model=data["model"], baseline=data["baseline"], candidate=data["candidate"],
            steps=steps, criteria=criteria, on_deadline=on_deadline,
            notify_events=notifications_from_dict(data.get("notifications")),
        )


def notifications_from_dict(data: Any) -> tuple[str, ...]:
    """`{"events": [...]}` (None: every event) as checked event kinds."""
    if data is None:
        return NOTIFY_EVENTS
    if not isinstance(data, Mapping) or set(data) - {"events"}:
        raise InvalidInput(f"notifications must be an object with 'events' (a list of event kinds), got {data!r}")
    return check_notify_events(data.get("events", NOTIFY_EVENTS))


def _seq(name: str, value: Any) -> Sequence[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise InvalidInput(f"{name} must be a list, got {type(value).__name__}")
    return value


def _from_fields(kind: str, cls: type[Any], data: Any) -> Any:
    if not isinstance(data, Mapping):
        raise InvalidInput(f"{kind} must be an object, got {type(data).__name__}")
    names = set(cls.__dataclass_fields__)
    unknown = set(data) - names
    if unknown:
        raise InvalidInput(f"unknown {kind} field(s) {sorted(unknown)}; accepted: {sorted(names)}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise InvalidInput(f"{kind}: {exc}") from None


def step_from_dict(data: Any, index: int = 0) -> Step:
    return _from_fields(f"step {index}", Step, data)  # type: ignore[no-any-return]


def step_to_dict(step: Step) -> dict[str, Any]:
    return {
        "weight_pct": step.weight_pct,
        "shadow": step.shadow,
        "min_duration_s": step.min_duration_s,
        "min_samples": step.min_samples,
        "max_duration_s": step.max_duration_s,
        "approval": step.approval,
        "timeout_s": step.timeout_s,
        "on_timeout": step.on_timeout.value,
    }


def canonical_criteria(data: Mapping[str, Any], where: str = "criteria") -> dict[str, Any]:
    """The criteria with every short name (CRITERIA_ALIASES) turned into its field name; a criterion named twice
    (short and long) is refused."""
    out: dict[str, Any] = {}
    short = {full: alias for alias, full in CRITERIA_ALIASES.items()}
    for name, value in data.items():
        key = CRITERIA_ALIASES.get(name, name)
        if key in out:
            raise InvalidInput(f"{where}: {key!r} is given twice, as {key!r} and as its short name {short[key]!r}: "
                               "give it once")
        out[key] = value
    return out


def criteria_from_dict(data: Any) -> Criteria:
    if isinstance(data, Mapping):
        data = canonical_criteria(data)
    return _from_fields("criteria", Criteria, data)  # type: ignore[no-any-return]


def criteria_names() -> list[str]:
    """Every accepted spelling: the field names and their short names."""
    return sorted([*Criteria.__dataclass_fields__, *CRITERIA_ALIASES])


def criteria_pairs(text: str, flag: str) -> dict[str, Any]:
    """`latency=0.5,memory=0.6,accuracy=0.02` (short or field names) as {field name: value}; `flag` names the
    option in errors (--gates, --criteria). Ranges are checked by Criteria."""
    values: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, raw = part.partition("=")
        name, raw = name.strip(), raw.strip()
        key = CRITERIA_ALIASES.get(name, name)
        if not sep or key not in Criteria.__dataclass_fields__:
            raise InvalidInput(f"{flag}: cannot read {part!r}; write name=value with a name in {criteria_names()}")
        if key in values:
            raise InvalidInput(f"{flag}: {key!r} is given twice: give it once")
        if key == "memory_source":
            values[key] = raw
            continue
        try:
            number = float(raw)
        except ValueError:
            raise InvalidInput(f"{flag}: {name}={raw!r} is not a number") from None
        values[key] = int(number) if key == "min_samples" and number.is_integer() else number
    return values


def parse_criteria_pairs(text: str, flag: str) -> Criteria:
    """`criteria_pairs` checked into Criteria (the defaults for what the text does not name)."""
    return criteria_from_dict(criteria_pairs(text, flag))


def criteria_option(text: str, flag: str) -> dict[str, Any]:
    """A criteria option as the CLI takes it, JSON (`{"latency": 0.3}`) or pairs (`latency=0.3,alpha=0.01`), as
    {field name: value} with short names turned into field names."""
    if not text.lstrip().startswith("{"):
        return criteria_pairs(text, flag)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"{flag} is neither JSON nor name=value pairs: {exc}; e.g. {flag} latency=0.5,alpha=0.01 "
                           f"or {flag} '{{\"latency\": 0.5}}'") from None
    return canonical_criteria(data, flag)  # JSON that starts with "{" is an object


def criteria_to_dict(criteria: Criteria) -> dict[str, Any]:
    out = {name: getattr(criteria, name) for name in Criteria.__dataclass_fields__}
    out["memory_source"] = criteria.memory_source.value
    return out


@dataclass(frozen=True, slots=True)
class CriterionResult:
    """The statistics' answer for one criterion at one look."""

    criterion: str  # "latency_p50", "latency_p95", "memory", "accuracy", "errors"
    verdict: Verdict
    estimate: float | None
    ci_low: float | None
    ci_high: float | None
    threshold: float
    baseline_value: float | None
    candidate_value: float | None
    baseline_n: int
    candidate_n: int
    method: str
    message: str
    # What the figures are: "live" (the routers' measurements), "offline" (the optimizer's figures), or
    # "unmeasurable" (nothing this criterion may decide on: the message says why and what to do).
    source: str = "live"
    # The confidence sequences behind the verdict, by name: {"look": [low, high], "carried": [low, high]}, this
    # look's own interval and the running one from the looks before (None: unbounded). ci_low/ci_high are their
    # intersection; the next look carries it, so a decision replays from its windows and this.
    sequences: Mapping[str, Mapping[str, tuple[float | None, float | None]]] = field(default_factory=dict)
