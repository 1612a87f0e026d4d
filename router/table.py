"""The routing table: per model, the loaded variants and the current split, swapped atomically on change.

Requests read one immutable `ModelRoutes` snapshot; the split watcher builds the next one
(loading any new variant first, off the event loop) and replaces it in a single assignment. A variant of
the split that cannot serve (its load failed, its artifact failed the integrity check, a restart found
it changed, its signature differs) is left out of the snapshot with its reason (`cannot_serve`): its
traffic goes to the split's baseline, and readiness and the controller are told why.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from modelroll.errors import ModelrollError, NotFound
from modelroll.live.base import Sample, SplitConfig
from router.breaker import Breaker
from router.inline import InlineGate
from router.runners import Runner, RunnerError
from router.split import Split
from router.tensors import Signature, metadata_bytes
from router.variants import VariantSource, VariantSpec, baseline_of, load_runner

log = logging.getLogger(__name__)

_PLATFORM = {"inline": "onnxruntime_onnx", "subprocess": "onnxruntime_onnx", "http": "remote_v2"}


class LoadedVariant:
    __slots__ = ("breaker", "inline", "model", "name", "runner", "spec")

    def __init__(self, spec: VariantSpec, runner: Runner, breaker: Breaker, inline: InlineGate | None = None) -> None:
        self.spec = spec
        self.model = spec.model
        self.name = spec.name
        self.runner = runner
        self.breaker = breaker
        self.inline = inline  # set: a fast in-process model, run on the event loop while it stays fast


@dataclass(frozen=True, slots=True)
class ModelRoutes:
    model: str
    split: Split
    config: SplitConfig | None
    variants: dict[str, LoadedVariant]
    fallback: LoadedVariant
    shadow: LoadedVariant | None
    signature: Signature
    metadata: bytes
    known: frozenset[str]  # every variant name the source lists (forcing may load one on demand)
    cannot_serve: Mapping[str, str] = field(default_factory=dict)  # variant of the split -> why it is not served

    @property
    def rollout_id(self) -> int | None:
        return self.config.rollout_id if self.config is not None else None

    @property
    def step(self) -> int | None:
        return self.config.step if self.config is not None else None


class ModelTable:
    def __init__(self, source: VariantSource, *, default_runner: str, threads: int, breaker_failures: int,
                 on_change: Callable[[ModelRoutes], None] | None = None,
                 inline_gate: Callable[[Runner], InlineGate | None] | None = None) -> None:
        self._source = source
        self._inline_gate = inline_gate
        self._default_runner = default_runner
        self._threads = threads
        self._breaker_failures = breaker_failures
        self._on_change = on_change
        self._loaded: dict[tuple[str, str], LoadedVariant] = {}
        self._load_lock = threading.RLock()
        self.routes: dict[str, ModelRoutes] = {}
        self.errors: dict[str, str] = {}  # model -> why it cannot serve

    def load_all(self) -> None:
        for model in self._source.models():
            try:
                self.apply(None, model)
            except (RunnerError, ModelrollError) as exc:
                self.errors[model] = str(exc)
                log.error("model %s cannot be served: %s", model, exc)

    def variant(self, model: str, name: str) -> LoadedVariant:
        """The loaded variant, loading it now if the source knows it (blocking)."""
        with self._load_lock:
            found = self._loaded.get((model, name))
            if found is not None:
                if not found.runner.refused:
                    return found
                del self._loaded[(model, name)]  # its artifact changed: load it afresh (checked again)
                found.runner.close()
            specs = {s.name: s for s in self._source.variants(model)}
            spec = specs.get(name)
            if spec is None:
                raise NotFound(f"variant {name!r} of model {model!r} is unknown; known variants: {sorted(specs)}")
            try:
                runner = load_runner(spec, self._default_runner, self._threads,
                                     on_refused=partial(self._refused, model, name))
            except ModelrollError as exc:  # its file is gone, ...: a known variant that cannot load
                raise RunnerError(exc.message) from exc
            gate = self._inline_gate(runner) if self._inline_gate is not None else None
            loaded = LoadedVariant(spec, runner, Breaker(self._breaker_failures), gate)
            self._loaded[(model, name)] = loaded
            log.info("loaded variant model=%s variant=%s runner=%s", model, name, runner.kind)
            return loaded

    def apply(self, config: SplitConfig | None, model: str | None = None) -> ModelRoutes | None:
        """Build and install the routes for one model's split (None: its baseline at 100 %)."""
        model = config.model if config is not None else model
        assert model is not None
        return self._install(config, model)

    def _refused(self, model: str, name: str, reason: str) -> None:
        """A runner's restart found its artifact changed: rebuild the model's routes without it (its traffic goes
        to the split's baseline) and with the reason; called on that runner's restart thread."""
        log.error("variant %s of %s refused, its traffic goes to the split's baseline: %s", name, model, reason)
        current = self.routes.get(model)
        if current is None or name not in current.variants:
            return
        try:
            self._install(current.config, model, replaces=current)
        except (RunnerError, ModelrollError) as exc:  # the baseline itself: keep the routes there are
            log.error("routes of %s could not be rebuilt after %s was refused: %s", model, name, exc)

    def _install(self, config: SplitConfig | None, model: str,
                 replaces: ModelRoutes | None = None) -> ModelRoutes | None:
        """Build the routes of `config` and install them; `replaces`: rebuild those routes with the same split,
        unless a newer split replaced them meanwhile."""
        with self._load_lock:
            current = self.routes.get(model)
            if replaces is not None and current is not replaces:
                return current  # a newer split was installed: it loaded afresh
            # Equal means a re-delivery. Any other version applies, lower ones too: the channel's watcher already
            # drops stale messages, and a Redis that lost its data numbers splits from 1 again.
            if replaces is None and config is not None and current is not None and current.config == config:
                return current
            specs = self._source.variants(model)
            default = baseline_of(specs)
            if config is None:
                if default is None:
                    raise NotFound(f"model {model!r} has no production variant")
                config_weights: dict[str, float] = {default.name: 100.0}
            else:
                config_weights = dict(config.weights)
            fallback_name = self._fallback_name(config, config_weights, specs, default)
            variants: dict[str, LoadedVariant] = {}
            cannot_serve: dict[str, str] = {}
            wanted = [n for n, w in config_weights.items() if w > 0 or n == fallback_name]
            if config is not None and config.shadow:
                wanted.append(config.shadow)
            for name in wanted:
                try:
                    variants[name] = self.variant(model, name)
                except (RunnerError, ModelrollError) as exc:
                    if name == fallback_name:
                        raise
                    cannot_serve[name] = _reason(exc)
                    log.error("variant %s of %s cannot be loaded, its traffic goes to %s: %s",
                              name, model, fallback_name, exc)
            for loaded in variants.values():
                if replaces is None:
                    loaded.breaker.reset()  # a new split is the controller's decision (a rebuild is not)
            fallback = variants[fallback_name]
            signature = fallback.runner.signature
            for name, loaded in list(variants.items()):
                why = signature.compatible_with(loaded.runner.signature)
                if why is not None:
                    log.error("variant %s of %s does not match the baseline's signature (%s); not served", name,
                              model, why)
                    cannot_serve[name] = f"its inputs or outputs differ from the baseline {fallback_name!r}'s: {why}"
                    del variants[name]
            shadow = variants.get(config.shadow) if config is not None and config.shadow else None
            names = sorted(s.name for s in specs)
            routes = ModelRoutes(
                model=model, split=Split(config_weights, fallback_name), config=config, variants=variants,
                fallback=fallback, shadow=shadow, signature=signature,
                metadata=metadata_bytes(model, names, signature, _PLATFORM.get(fallback.runner.kind, "onnx")),
                known=frozenset(names), cannot_serve=cannot_serve,
            )
            self.routes[model] = routes
            self.errors.pop(model, None)
            gone = [self._loaded.pop(key) for key in list(self._loaded) if key[0] == model and key[1] not in names]
        for loaded in gone:  # retired since it was loaded: its runner's memory goes back
            log.info("unloading variant model=%s variant=%s: no longer in the catalog", model, loaded.name)
            loaded.runner.close()
        if self._on_change is not None:
            self._on_change(routes)
        return routes

    @staticmethod
    def _fallback_name(config: SplitConfig | None, weights: dict[str, float], specs: list[VariantSpec],
                       default: VariantSpec | None) -> str:
        """The split's baseline (the production variant the rollout started from), whatever its catalog role."""
        if config is not None and config.baseline is not None:
            return config.baseline
        if default is not None and default.name in weights:
            return default.name
        roles = {s.name: s.role for s in specs}
        baselines = [n for n in weights if roles.get(n) == "baseline"]
        if baselines:
            return sorted(baselines)[0]
        return max(weights, key=lambda n: (weights[n], n))

    def runners(self) -> list[LoadedVariant]:
        with self._load_lock:
            return list(self._loaded.values())

    def close(self) -> None:
        for loaded in self.runners():
            try:
                loaded.runner.close()
            except Exception:
                log.exception("closing runner of %s/%s failed", loaded.model, loaded.name)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for model, routes in self.routes.items():
            out[model] = {
                "ready": True,  # the baseline serves: a variant that cannot is listed, its traffic on the baseline
                "split_version": routes.config.version if routes.config else 0,
                "rollout_id": routes.rollout_id, "step": routes.step,
                "weights": routes.split.weights, "fallback": routes.fallback.name,
                "shadow": routes.shadow.name if routes.shadow else None,
                "ejected": sorted(n for n, v in routes.variants.items() if v.breaker.ejected),
                "cannot_serve": dict(routes.cannot_serve),
            }
        for model, why in self.errors.items():
            out.setdefault(model, {"ready": False, "error": why})
        return out

    def cannot_serve_samples(self, now: float) -> list[Sample]:
        """One "cannot_serve" sample per variant of a split that is not served, with its reason: the controller
        fails the variant's rollout on it (sent with the memory readings, while the condition lasts)."""
        return [Sample(kind="cannot_serve", model=model, variant=name, ts=now, rollout_id=routes.rollout_id,
                       step=routes.step, status="error", reason=reason)
                for model, routes in list(self.routes.items()) for name, reason in routes.cannot_serve.items()]


def _reason(exc: BaseException) -> str:
    return exc.message if isinstance(exc, ModelrollError) else str(exc)
