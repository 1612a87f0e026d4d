"""Start the router under uvicorn: the app factory each worker calls, and where its variants come from.

Variants come from the catalog (database + artifact store) unless `MODELROLL_ROUTER_VARIANTS`
(JSON, set by `modelroll router --variant ...`) names ONNX files or remote V2 servers directly.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import orjson

from modelroll.errors import InvalidInput
from modelroll.settings import Settings
from router.app import RouterApp, create_app
from router.variants import CatalogVariantSource, StaticVariantSource, VariantSource, VariantSpec

ENV_VARIANTS = "MODELROLL_ROUTER_VARIANTS"


def parse_variant(text: str) -> VariantSpec:
    """`MODEL/VARIANT=PATH.onnx` or `MODEL/VARIANT=http://host:port[#remote_model]`; 'baseline' is the baseline."""
    head, sep, target = text.partition("=")
    model, slash, name = head.partition("/")
    if not sep or not slash or not model or not name or not target:
        raise InvalidInput(f"variant {text!r} must look like MODEL/VARIANT=PATH.onnx or MODEL/VARIANT=http://host:port")
    role = "baseline" if name == "baseline" else "candidate"
    if target.startswith(("http://", "https://")):
        url, _, remote = target.partition("#")
        return VariantSpec(model=model, name=name, role=role, url=url, remote_model=remote or model)
    path = Path(target)
    if not path.is_file():
        raise InvalidInput(f"variant {text!r}: no file at {path}")
    return VariantSpec(model=model, name=name, role=role, path=path.resolve())


def specs_to_env(specs: list[VariantSpec]) -> str:
    return orjson.dumps([
        {"model": s.model, "name": s.name, "role": s.role, "path": str(s.path) if s.path else None,
         "url": s.url, "remote_model": s.remote_model, "runner": s.runner} for s in specs
    ]).decode()


def specs_from_env(raw: str) -> list[VariantSpec]:
    out = []
    for item in orjson.loads(raw):
        data: dict[str, Any] = dict(item)
        if data.get("path"):
            data["path"] = Path(data["path"])
        out.append(VariantSpec(**data))
    return out


def source_for(settings: Settings) -> VariantSource:
    raw = os.environ.get(ENV_VARIANTS)
    if raw:
        return StaticVariantSource(specs_from_env(raw))
    from modelroll.artifacts import ArtifactStore
    from modelroll.db import make_engine, make_session_factory

    return CatalogVariantSource(make_session_factory(make_engine(settings)), ArtifactStore.from_settings(settings))


def app_from_env() -> RouterApp:
    """The uvicorn factory (`router.serve:app_from_env`), called once in every worker process."""
    from modelroll.live import open_channel

    settings = Settings()
    return create_app(settings, open_channel(settings), source_for(settings))


def serve(settings: Settings, workers: int, specs: list[VariantSpec], log_level: str = "warning") -> None:
    import uvicorn

    if workers > 1 and not settings.redis_url:
        raise InvalidInput(f"--workers {workers} needs MODELROLL_REDIS_URL: each worker would otherwise have its "
                           "own in-process live channel and miss the controller's splits")
    if specs:
        os.environ[ENV_VARIANTS] = specs_to_env(specs)
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = tempfile.mkdtemp(prefix="modelroll-router-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        atexit.register(shutil.rmtree, metrics_dir, True)
    uvicorn.run("router.serve:app_from_env", factory=True, host=settings.router_host, port=settings.router_port,
                workers=workers, log_level=log_level, access_log=False, lifespan="on",
                http="httptools", loop="uvloop")
