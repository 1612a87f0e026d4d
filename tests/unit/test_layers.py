"""The dependency direction of ARCHITECTURE.md, checked on the source: the kernel imports no service, a service
imports no other service, and nothing imports the composition root (modelroll_app/)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("router", "optimizer", "controller")
TOP = "modelroll_app"


def imported_packages(package: str) -> dict[str, set[str]]:
    """Every module of `package` → the top-level packages it imports (at any depth: lazy imports count)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


def test_the_kernel_imports_no_service_and_not_the_composition_root() -> None:
    offenders = {module: sorted(names & {*SERVICES, TOP})
                 for module, names in imported_packages("modelroll").items() if names & {*SERVICES, TOP}}
    assert not offenders, f"the kernel must not import a service: {offenders}"


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_only_the_kernel(service: str) -> None:
    others = {*SERVICES, TOP} - {service}
    offenders = {module: sorted(names & others)
                 for module, names in imported_packages(service).items() if names & others}
    assert not offenders, f"{service} must talk to the others through the database and the live channel: {offenders}"


def test_the_composition_root_wires_every_service() -> None:
    used = set().union(*imported_packages(TOP).values())
    assert {"modelroll", *SERVICES} <= used
