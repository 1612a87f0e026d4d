"""YAML (and JSON) documents read safely, keeping the line of every field for error messages.

Only the safe scalar types; at most 1 MiB of text, 32 documents, 32 levels of nesting and 20,000 nodes counted
with every alias expanded, so a YAML bomb (aliases of aliases) is refused before it grows; duplicate keys and
keys that are not text are refused with their line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from modelroll.errors import InvalidInput, PayloadTooLarge

MAX_DOCUMENT_BYTES = 1024 * 1024
MAX_DOCUMENTS = 32
MAX_DEPTH = 32
MAX_NODES = 20_000

FieldPath = tuple[str | int, ...]


def dotted(path: FieldPath) -> str:
    """("spec", "steps", 2, "timeout_s") → "spec.steps[2].timeout_s"."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "the document"


@dataclass(frozen=True, slots=True)
class Located:
    """One document's data with the line (1-based) of each value and of each mapping key, by field path."""

    data: Any
    lines: Mapping[FieldPath, int]
    key_lines: Mapping[FieldPath, int]
    source: str = ""  # the file name, for messages; "" for a request body
    index: int = 0  # the document's position in its file

    def line_of(self, path: FieldPath) -> int:
        """The line of the field (its key's), else of the nearest enclosing field that has one."""
        for end in range(len(path), -1, -1):
            found = self.key_lines.get(path[:end]) or self.lines.get(path[:end])
            if found:
                return found
        return 1

    def at(self, path: FieldPath) -> str:
        """ "rollout.yaml:12: spec.steps[2]" (or "line 12: ..." without a file): where a message points."""
        return f"{_where(self.source, self.line_of(path))}: {dotted(path)}"

    def error(self, path: FieldPath, message: str) -> InvalidInput:
        return InvalidInput(f"{self.at(path)}: {message}")


def _where(source: str, line: int) -> str:
    return f"{source}:{line}" if source else f"line {line}"


class _Builder:
    """Node graph → plain data, counting every node it visits (aliases included) against the limits."""

    def __init__(self, loader: yaml.SafeLoader, source: str) -> None:
        self.loader = loader
        self.source = source
        self.visited = 0
        self.lines: dict[FieldPath, int] = {}
        self.key_lines: dict[FieldPath, int] = {}

    def fail(self, node: Node, message: str) -> InvalidInput:
        return InvalidInput(f"{_where(self.source, node.start_mark.line + 1)}: {message}")

    def build(self, node: Node, path: FieldPath) -> Any:
        self.visited += 1
        if self.visited > MAX_NODES:
            raise self.fail(node, f"{dotted(path[:3])}: the document expands to more than {MAX_NODES} values "
                                  "(anchors and aliases counted each time they are used): a YAML bomb is refused; "
                                  "write it out plainly")
        if len(path) > MAX_DEPTH:
            raise self.fail(node, f"{dotted(path[:3])}: the document nests deeper than {MAX_DEPTH} levels (or an "
                                  "alias refers to itself): refused")
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, ScalarNode):
            return self.loader.construct_object(node, deep=True)
        if isinstance(node, SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        if isinstance(node, MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, ScalarNode):
                    raise self.fail(key_node, f"{dotted(path)}: a key must be text, not a list or a mapping")
                key = self.loader.construct_object(key_node)
                if not isinstance(key, str):
                    raise self.fail(key_node, f"{dotted(path)}: key {key_node.value!r} is read as {key!r}, not "
                                              "text (YAML reads yes/no/on/off as true/false): quote it")
                if key in out:
                    raise self.fail(key_node, f"{dotted((*path, key))} is given twice: give each field once")
                self.key_lines[(*path, key)] = key_node.start_mark.line + 1
                out[key] = self.build(value_node, (*path, key))
            return out
        raise self.fail(node, f"{dotted(path)}: unsupported YAML node")  # pragma: no cover - the composer makes none


def _text(document: str | bytes, source: str) -> str:
    size = len(document.encode() if isinstance(document, str) else document)
    if size > MAX_DOCUMENT_BYTES:
        raise PayloadTooLarge(f"{source or 'the document'} is {size} bytes, over the {MAX_DOCUMENT_BYTES} bytes "
                              "(1 MiB) a spec document may have")
    if isinstance(document, bytes):
        try:
            return document.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"{source or 'the document'} is not UTF-8 text (byte {exc.start}): "
                               "send YAML or JSON in UTF-8") from None
    return document


class _Loader(yaml.SafeLoader):  # type: ignore[misc]
    """SafeLoader reading numbers as JSON and YAML 1.2 do: `1e-06` is a float (YAML 1.1 wants `1.0e-06`), so a JSON
    document means the same whichever parser reads it."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def load_documents(document: str | bytes, source: str = "") -> list[Located]:
    """Every document of a YAML (or JSON) text, in order, each with its field lines; raises InvalidInput (with the
    line) for a syntax error, a duplicate key, a YAML bomb, or PayloadTooLarge over 1 MiB."""
    text = _text(document, source)
    loader: yaml.SafeLoader | None = None
    try:
        loader = _Loader(text)
        return list(_documents(loader, source))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        what = " ".join(str(part) for part in (exc.context, exc.problem) if part)
        raise InvalidInput(f"{_where(source, line)}: not valid YAML: {what}") from None
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{source or 'the document'}: not valid YAML: {exc}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _documents(loader: yaml.SafeLoader, source: str) -> Iterator[Located]:
    index = 0
    while loader.check_node():
        node = loader.get_node()
        if node is None:  # pragma: no cover - check_node said there is one
            break
        if index >= MAX_DOCUMENTS:
            raise InvalidInput(f"{_where(source, node.start_mark.line + 1)}: more than {MAX_DOCUMENTS} documents "
                               "in one file: split it")
        builder = _Builder(loader, source)
        data = builder.build(node, ())
        yield Located(data, builder.lines, builder.key_lines, source, index)
        index += 1
