"""An OpenVINO candidate as one artifact: a folder holding the IR pair (model.xml, model.bin) and modelroll.json,
which records the runtime version it was built with and the compile settings that are part of the candidate.

The store keeps the folder as one deterministic tar (modelroll/artifacts.py), so the pair has one sha256 and
can never be served half old, half new; a runner reads the members out of the very bytes it verified.
No import of openvino here: the catalog and the router read the manifest without the runtime.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelroll.errors import InvalidInput

FORMAT = "openvino"
XML = "model.xml"
BIN = "model.bin"
MANIFEST = "modelroll.json"
# Set on every load of every OpenVINO variant (offline and in the router), like onnxruntime's sessions here: one
# stream, the given thread count, threads not pinned to cores (a pinned thread waits for its core on a shared
# machine). The candidate's own settings (its manifest's `config`) come on top.
BASE_CONFIG = {"NUM_STREAMS": "1", "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": "NO"}


@dataclass(frozen=True, slots=True)
class IrManifest:
    """What a loader needs beside the IR: the version that wrote it and the compile properties to apply
    (e.g. INFERENCE_PRECISION_HINT=f32), plus how it was built, for the report."""

    runtime_version: str
    config: Mapping[str, str] = field(default_factory=dict)
    built_with: Mapping[str, str] = field(default_factory=dict)  # e.g. {"nncf": "3.4.0"}
    recipe: str = ""

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "runtime": "openvino", "runtime_version": self.runtime_version,
                           "config": dict(self.config), "built_with": dict(self.built_with),
                           "recipe": self.recipe}, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> IrManifest:
        try:
            data: dict[str, Any] = json.loads(text)
            return cls(runtime_version=str(data["runtime_version"]),
                       config={str(k): str(v) for k, v in (data.get("config") or {}).items()},
                       built_with={str(k): str(v) for k, v in (data.get("built_with") or {}).items()},
                       recipe=str(data.get("recipe") or ""))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidInput(f"{MANIFEST} of an OpenVINO artifact is unreadable: {exc}") from None


def compile_config(config: Mapping[str, str], threads: int) -> dict[str, str]:
    """What a loader passes to `compile_model`: the base, the thread count, then the candidate's own settings."""
    return {**BASE_CONFIG, "INFERENCE_NUM_THREADS": str(threads), **config}


def write_manifest(folder: Path, manifest: IrManifest) -> None:
    (Path(folder) / MANIFEST).write_text(manifest.to_json())


def is_ir_folder(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / XML).is_file() and (path / BIN).is_file() and (path / MANIFEST).is_file()


def read_manifest(folder: Path) -> IrManifest:
    """The manifest of an IR folder; InvalidInput naming what is missing when the folder is not one."""
    folder = Path(folder)
    if not is_ir_folder(folder):
        raise InvalidInput(f"{folder} is not an OpenVINO candidate folder: it needs {XML}, {BIN} and {MANIFEST}")
    return IrManifest.from_json((folder / MANIFEST).read_text())


def size_bytes(folder: Path) -> int:
    """Bytes on disk of the candidate: the IR pair and its manifest."""
    return sum((Path(folder) / name).stat().st_size for name in (XML, BIN, MANIFEST))


class _ViewReader(io.RawIOBase):
    """A read-only, seekable file over a memoryview: tarfile reads the headers without a copy of the whole tar."""

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self._view, self._at = view, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self._view[self._at : self._at + len(buffer)]
        buffer[: len(chunk)] = chunk
        self._at += len(chunk)
        return len(chunk)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._at, io.SEEK_END: len(self._view)}[whence]
        self._at = max(0, base + offset)
        return self._at

    def tell(self) -> int:
        return self._at


def members(data: bytes | bytearray) -> tuple[bytes, memoryview, IrManifest]:
    """(xml, bin, manifest) of a stored folder's tar bytes, in memory: the weights are a view into `data` (writable
    when `data` is a bytearray), not a copy, so loading them costs no second copy of the largest file."""
    found: dict[str, memoryview] = {}
    view = memoryview(data)
    try:
        with tarfile.open(fileobj=io.BufferedReader(_ViewReader(view)), mode="r:") as tar:
            for member in tar:
                if member.isfile() and member.name in (XML, BIN, MANIFEST):
                    found[member.name] = view[member.offset_data : member.offset_data + member.size]
    except tarfile.TarError as exc:
        raise InvalidInput(f"an OpenVINO artifact must be a stored folder (tar): {exc}") from None
    missing = [name for name in (XML, BIN, MANIFEST) if name not in found]
    if missing:
        raise InvalidInput(f"the OpenVINO artifact has no {', '.join(missing)}: it needs {XML}, {BIN} and {MANIFEST}")
    return bytes(found[XML]), found[BIN], IrManifest.from_json(bytes(found[MANIFEST]))
