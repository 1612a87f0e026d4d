"""Which runtime runs each artifact format, whether it is installed here, and the refusal when it is not.

A candidate is built for one runtime (onnxruntime or OpenVINO) and records the version it was built with;
a process that would load it checks first, with `require`, and refuses with what to do instead of failing
somewhere inside the runtime. Light on purpose (importlib.metadata only): the router calls it before it
starts a runner.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import metadata

from modelroll.errors import Unavailable

ONNXRUNTIME = "onnxruntime"
OPENVINO = "openvino"
# Artifact format (ArtifactRow.format) -> the runtime that serves it.
FORMAT_RUNTIME = {"onnx": ONNXRUNTIME, "openvino": OPENVINO}
SERVABLE_FORMATS = tuple(FORMAT_RUNTIME)
INSTALL_HINT = {
    ONNXRUNTIME: "pip install -c constraints.txt onnxruntime",
    OPENVINO: "pip install -c constraints.txt 'modelroll[openvino]' (make install does)",
}


@cache
def installed_version(runtime: str) -> str | None:
    """The installed version of `runtime`'s package, or None when it is not installed in this environment."""
    try:
        return metadata.version(runtime)
    except metadata.PackageNotFoundError:
        return None


def release(version: str) -> tuple[int, ...]:
    """The leading numeric release of a version string: '2026.4.1' -> (2026, 4, 1), '1.20.0rc1' -> (1, 20, 0)."""
    numbers = []
    for part in version.split("."):
        match = re.match(r"\d+", part)
        if match is None:
            break
        numbers.append(int(match.group()))
    return tuple(numbers)


def runtime_of(fmt: str) -> str:
    """The runtime that serves artifacts of format `fmt`; Unavailable for a format no runtime here serves."""
    runtime = FORMAT_RUNTIME.get(fmt)
    if runtime is None:
        raise Unavailable(f"artifacts of format {fmt!r} cannot be served: servable formats are "
                          f"{list(SERVABLE_FORMATS)}")
    return runtime


def require(fmt: str, built_with: str | None = None, *, what: str = "this artifact") -> str:
    """The installed version of the runtime that serves `fmt`; Unavailable, saying what to do, when that runtime
    is not installed or is older than the version `what` was built with (an older runtime may not know the
    operations a newer converter wrote)."""
    runtime = runtime_of(fmt)
    version = installed_version(runtime)
    built = f" (built with {runtime} {built_with})" if built_with else ""
    if version is None:
        raise Unavailable(f"{what} runs on {runtime}{built}, and {runtime} is not installed here: "
                          f"{INSTALL_HINT[runtime]}, or serve another variant")
    if built_with and release(version)[:2] < release(built_with)[:2]:
        raise Unavailable(f"{what} was built with {runtime} {built_with}, newer than the {version} installed here: "
                          f"upgrade {runtime} to {built_with} or later, or rebuild the candidate with {version}")
    return version
