"""The technique registry and the recipe grammar: "prune:0.5,distill,int8-static:entropy" → a validated `Recipe`.

Grammar: steps separated by ",", each `technique[:value][:name=value]...`; a bare value sets the
technique's main parameter, a bare boolean parameter name sets it true ("int8:per_channel").
Torch steps (prune, drop-layers, distill) come first, then at most one final step on the exported file: an
onnxruntime quantization (int8, int8-static) or an OpenVINO one (ov, ov-int8, ov-weights). The final step names
the runtime the candidate is built for and served with; its runtime settings are part of the candidate.
In the kernel so that the ops API, the CLI and the worker refuse a bad recipe the same way, before a job is
queued; the optimizer (optimizer/recipes.py) builds what it describes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelroll.errors import InvalidInput
from modelroll.runtimes import ONNXRUNTIME, OPENVINO


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    kind: type  # float, int, bool or str
    default: Any
    low: float | None = None
    high: float | None = None
    high_open: bool = False
    choices: tuple[str, ...] = ()
    help: str = ""

    def accepted(self) -> str:
        if self.choices:
            return f"one of {list(self.choices)}"
        if self.kind is bool:
            return "true or false"
        bracket = ")" if self.high_open else "]"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"{self.kind.__name__} in [{self.low:g}, {high}{bracket}"

    def parse(self, raw: str, technique: str) -> Any:
        bad = InvalidInput(f"{technique}: {self.name}={raw!r} is not accepted: {self.name} is {self.accepted()}")
        if self.kind is bool:
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise bad
            return raw.lower() in ("true", "1", "yes")
        if self.kind is str:
            if raw not in self.choices:
                raise bad
            return raw
        try:
            value = self.kind(raw)
        except ValueError:
            raise bad from None
        if value != value or (self.low is not None and value < self.low) or (self.high is not None and (
                value >= self.high if self.high_open else value > self.high)):
            raise bad
        return value


@dataclass(frozen=True, slots=True)
class Technique:
    name: str
    stage: str  # "torch" (needs the torch model, before export) | "onnx" (on the exported file)
    params: tuple[Param, ...]
    help: str
    runtime: str = ONNXRUNTIME  # what a candidate whose final step this is runs on

    @property
    def main(self) -> Param | None:
        return self.params[0] if self.params else None

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise InvalidInput(f"{self.name} has no parameter {name!r}: accepted {[p.name for p in self.params]}")


# OpenVINO runtime settings, part of every OpenVINO candidate (recorded in its manifest, applied wherever it loads).
_PRECISION = Param("precision", str, "default", choices=("default", "bf16", "f16", "f32"),
                   help="inference precision of what stays float; default: the runtime's (bf16 on CPUs with "
                        "AVX-512 BF16 or AMX, else f32)")
_CACHE = Param("cache", int, -1, -1, 1_000_000,
               help="kernels cached per input shape (CPU_RUNTIME_CACHE_CAPACITY); -1: the runtime's default")

TECHNIQUES: dict[str, Technique] = {t.name: t for t in (
    Technique("prune", "torch", (
        Param("amount", float, 0.5, 0.0, 1.0, True, help="fraction of MLP hidden / encoder FFN neurons removed"),
        Param("heads", float, 0.0, 0.0, 1.0, True, help="fraction of attention heads removed (encoders)"),
    ), "structured pruning: neurons and heads removed physically, by importance"),
    Technique("drop-layers", "torch", (
        Param("fraction", float, 0.34, 0.0, 1.0, True, help="at most this fraction of layers dropped"),
        Param("max_change", float, 1.0, 0.0, 2.0, help="stop when the output's cosine distance exceeds this"),
    ), "remove whole layers, least sensitive first, re-measured after each"),
    Technique("distill", "torch", (
        Param("steps", int, 300, 1, 100_000, help="optimizer steps"),
        Param("seconds", float, 120.0, 0.1, 3600.0, help="time limit"),
        Param("lr", float, 0.0, 0.0, 1.0, help="learning rate, 0 = the model kind's default"),
    ), "fine-tune the shrunk model against the baseline's outputs"),
    Technique("int8", "onnx", (
        Param("per_channel", bool, False, help="one scale per output channel"),
        Param("exclude", int, 0, 0, 10_000, help="keep this many most sensitive weight nodes in float"),
        Param("smooth", float, 0.0, 0.0, 1.0, True, help="SmoothQuant alpha before quantizing, 0 = off"),
    ), "INT8 dynamic quantization (onnxruntime quantize_dynamic)"),
    Technique("int8-static", "onnx", (
        Param("method", str, "minmax", choices=("minmax", "entropy", "percentile"), help="calibration"),
        Param("per_channel", bool, True, help="one scale per output channel"),
        Param("exclude", int, 0, 0, 10_000, help="keep this many most sensitive weight nodes in float"),
        Param("smooth", float, 0.0, 0.0, 1.0, True, help="SmoothQuant alpha before quantizing, 0 = off"),
    ), "INT8 static quantization, QDQ format, calibrated on sample inputs"),
    Technique("ov", "onnx", (_PRECISION, _CACHE), "convert to OpenVINO without quantizing: the runtime alone",
              OPENVINO),
    Technique("ov-int8", "onnx", (
        Param("kind", str, "auto", choices=("auto", "transformer", "cnn"),
              help="NNCF preset: transformer (mixed, SmoothQuant) or cnn (performance); auto reads the graph"),
        Param("subset", int, 300, 1, 100_000, help="calibration samples"),
        Param("embeddings", str, "int8", choices=("int8", "float", "expand"),
              help="int8: the table stays INT8 and rows are dequantized after the lookup; float: not quantized; "
                   "expand: NNCF's own (the runtime widens the table to f32 when it loads)"),
        Param("exclude", int, 0, 0, 10_000, help="keep this many most sensitive weight nodes in float"),
        Param("fast_bias", bool, True, help="fast bias correction (false: the slower, finer one)"),
        _PRECISION, _CACHE,
    ), "OpenVINO + NNCF post-training INT8 (weights and activations), calibrated on sample inputs", OPENVINO),
    Technique("ov-weights", "onnx", (
        Param("mode", str, "int8_asym", choices=("int8_asym", "int8_sym", "int4_asym", "int4_sym"),
              help="NNCF weight compression; activations stay float"),
        Param("ratio", float, 1.0, 0.0, 1.0, help="share of layers in int4 (int4 modes), the rest int8"),
        Param("group", int, 128, -1, 4096, help="int4 group size (-1: per channel)"),
        Param("dq", int, -1, -1, 4096, help="activations quantized on the fly per group of this many values for "
                                            "the INT8 weights (DYNAMIC_QUANTIZATION_GROUP_SIZE; -1: the runtime's "
                                            "32, 0: off, computing in float)"),
        _PRECISION, _CACHE,
    ), "OpenVINO + NNCF weight-only compression (embedding tables included)", OPENVINO),
)}
ALIASES = {"int8-dynamic": "int8", "dynamic": "int8", "static": "int8-static", "drop": "drop-layers",
           "openvino": "ov", "nncf": "ov-int8", "ov-wc": "ov-weights"}
FINAL_STEPS = tuple(name for name, t in TECHNIQUES.items() if t.stage == "onnx")


@dataclass(frozen=True, slots=True)
class Step:
    technique: str
    params: tuple[tuple[str, Any], ...]

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def stage(self) -> str:
        return TECHNIQUES[self.technique].stage

    def replace(self, **changes: Any) -> Step:
        return make_step(self.technique, {**self.options, **changes})

    def __str__(self) -> str:
        spec = TECHNIQUES[self.technique]
        changed = [f"{p.name}={_format(self.options[p.name])}" for p in spec.params
                   if self.options[p.name] != p.default]
        return ":".join([self.technique, *changed])


@dataclass(frozen=True, slots=True)
class Recipe:
    steps: tuple[Step, ...]

    @property
    def torch_steps(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.stage == "torch")

    @property
    def quantization(self) -> Step | None:
        """The final step on the exported file (a quantization, or a conversion to another runtime)."""
        return next((s for s in self.steps if s.stage == "onnx"), None)

    @property
    def runtime(self) -> str:
        """The runtime the candidate is built for: its final step's, onnxruntime when there is none."""
        final = self.quantization
        return TECHNIQUES[final.technique].runtime if final is not None else ONNXRUNTIME

    def replace_step(self, index: int, step: Step) -> Recipe:
        return Recipe((*self.steps[:index], step, *self.steps[index + 1 :]))

    def __str__(self) -> str:
        return ",".join(str(s) for s in self.steps)


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _technique(name: str, text: str) -> Technique:
    key = ALIASES.get(name, name)
    if key not in TECHNIQUES:
        accepted = sorted([*TECHNIQUES, *ALIASES])
        raise InvalidInput(f"unknown technique {name!r} in recipe {text!r}: accepted {accepted}")
    return TECHNIQUES[key]


def make_step(technique: str, options: Mapping[str, Any]) -> Step:
    """A step with every parameter set (defaults filled in), values checked against the registry."""
    spec = _technique(technique, technique)
    for name in options:
        spec.param(name)
    values = []
    for p in spec.params:
        value = options.get(p.name, p.default)
        values.append((p.name, p.parse(_format(value), spec.name)))
    return Step(spec.name, tuple(values))


def parse_recipe(text: str) -> Recipe:
    """Parse and validate a recipe string; InvalidInput names the bad part and what is accepted."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput("a recipe must be a non-empty string such as 'prune:0.5,distill,int8'")
    steps = []
    for chunk in text.split(","):
        parts = [p.strip() for p in chunk.strip().split(":")]
        if not parts[0]:
            raise InvalidInput(f"empty step in recipe {text!r}: steps are separated by single commas")
        spec = _technique(parts[0].lower(), text)
        options: dict[str, Any] = {}
        for position, part in enumerate(parts[1:]):
            name, sep, raw = part.partition("=")
            name = name.strip().replace("-", "_")
            if sep:
                param = spec.param(name)
            elif any(p.name == name and p.kind is bool for p in spec.params):
                param, raw = spec.param(name), "true"
            elif position == 0 and spec.main is not None:
                param, raw = spec.main, part
            else:
                raise InvalidInput(f"{spec.name}: cannot read {part!r}; write name=value with a name in "
                                   f"{[p.name for p in spec.params]}")
            if param.name in options:
                raise InvalidInput(f"{spec.name}: {param.name} is given twice in {chunk!r}")
            options[param.name] = param.parse(raw.strip(), spec.name)
        steps.append(make_step(spec.name, options))
    return check_recipe(Recipe(tuple(steps)), text)


def check_recipe(recipe: Recipe, text: str = "") -> Recipe:
    """Order rules: torch steps before quantization, one quantization at most, distill after a shrinking step."""
    label = text or str(recipe)
    seen_onnx = False
    shrunk = False
    for step in recipe.steps:
        if step.stage == "onnx":
            if seen_onnx:
                raise InvalidInput(f"recipe {label!r} quantizes twice: keep one of {' / '.join(FINAL_STEPS)}, "
                                   "at the end")
            seen_onnx = True
        elif seen_onnx:
            raise InvalidInput(f"recipe {label!r}: {step.technique} must come before the quantization step "
                               f"({' / '.join(FINAL_STEPS)})")
        elif step.technique == "distill" and not shrunk:
            raise InvalidInput(
                f"recipe {label!r}: distill fine-tunes a shrunk model; put it after prune or drop-layers")
        else:
            shrunk = shrunk or step.technique in ("prune", "drop-layers")
    return recipe


def recipe_slug(recipe: Recipe) -> str:
    """A variant-name-safe label, e.g. 'prune0.5-distill-int8'."""
    parts = []
    for step in recipe.steps:
        main = TECHNIQUES[step.technique].main
        value = step.options[main.name] if main is not None else None
        parts.append(f"{step.technique}{_format(value)}" if main is not None and main.kind is float else step.technique)
    return "-".join(parts)[:63]
