"""The Dockerfile builds what pyproject.toml packages, with the pinned CPU torch, as the user the chart expects."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def instructions(name: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(rf"^{name}\s+(.+)$", DOCKERFILE, re.MULTILINE)]


def test_image_copies_every_package_pyproject_installs() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = {line.split()[0] for line in instructions("COPY") if not line.startswith("--from")}
    assert packages <= copied, f"pip install . in the image would miss {sorted(packages - copied)}"
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert not packages & ignored, "the build context would not contain them"


def test_torch_is_the_constraints_pin_from_a_cpu_only_index() -> None:
    [pin] = [line for line in (ROOT / "constraints.txt").read_text().splitlines() if line.startswith("torch==")]
    [torch_install] = [line for line in DOCKERFILE.splitlines() if "torch==" in line]
    assert pin in torch_install.split() and "-c constraints.txt" in torch_install
    assert "--index-url \"${TORCH_INDEX_URL}\"" in torch_install
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in DOCKERFILE


def test_runs_as_the_non_root_user_the_chart_sets_and_exposes_the_service_ports() -> None:
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in DOCKERFILE
    [user] = instructions("USER")
    values = yaml.safe_load((ROOT / "helm" / "modelroll" / "values.yaml").read_text())
    uid, gid = (int(part) for part in user.split(":"))
    assert (uid, gid) == (values["podSecurityContext"]["runAsUser"], values["podSecurityContext"]["runAsGroup"])
    assert uid != 0
    assert instructions("EXPOSE") == ["8080 8081 8082"]
    [entrypoint] = instructions("ENTRYPOINT")
    assert entrypoint.endswith('"modelroll"]')
