"""The chart's documentation stays true: every value carries a comment, every value the README names exists."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

CHART = Path(__file__).resolve().parents[2] / "helm" / "modelroll"
VALUES_FILES = [CHART / "values.yaml", CHART / "charts" / "postgresql" / "values.yaml",
                CHART / "charts" / "redis" / "values.yaml"]
_KEY = re.compile(r"^(\s*)([A-Za-z_][\w.-]*):")


def undocumented_keys(text: str) -> list[str]:
    """Values (keys with a value on their line) with no comment right above them nor above a key they sit under."""
    missing: list[str] = []
    stack: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    previous = ""
    for line in text.splitlines():
        match = _KEY.match(line)
        if match:
            indent = len(match.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            documented = previous.lstrip().startswith("#") or any(doc for _, doc in stack)
            is_value = bool(line[match.end():].split("#", 1)[0].strip())
            if is_value and not documented:
                missing.append(match.group(2))
            stack.append((indent, documented))
        if line.strip():
            previous = line
    return missing


def test_the_checker_spots_an_undocumented_value() -> None:
    text = "# -- documented\na: 1\nb: 2\n# -- parent\nc:\n  d: 3\ne:\n  # -- leaf\n  f: 4\n  g: 5\n"
    assert undocumented_keys(text) == ["b", "g"]


@pytest.mark.parametrize("path", VALUES_FILES, ids=lambda p: str(p.relative_to(CHART)))
def test_every_value_is_documented(path: Path) -> None:
    assert undocumented_keys(path.read_text()) == []


def has_path(values: dict[str, Any], dotted: str) -> bool:
    node: Any = values
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_readme_names_only_values_that_exist() -> None:
    values = yaml.safe_load(VALUES_FILES[0].read_text())
    for sub in ("postgresql", "redis"):
        values[sub] = {**yaml.safe_load((CHART / "charts" / sub / "values.yaml").read_text()), **values[sub]}
    readme = (CHART.parent / "README.md").read_text()
    named = {token for token in re.findall(r"`([a-z][A-Za-z]*(?:\.[A-Za-z]+)+)`", readme)
             if not token.endswith((".yaml", ".json", ".md", ".py", ".txt"))}
    assert len(named) > 20, "the README should name the values ops change"
    assert [token for token in sorted(named) if not has_path(values, token)] == []
