"""Content-addressed artifact store: each artifact at root/<sha[:2]>/<sha>, its sha256 checked on every load
(modelroll/integrity.py: the one check, also used by the router's runners on every load and restart).

A directory (e.g. a Hugging Face model folder) is stored as one deterministic,
uncompressed tar and extracted to root/.trees/<sha> when it is loaded.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from modelroll.errors import InvalidInput, NotFound, Tampered, Unavailable
from modelroll.integrity import CHUNK_BYTES, check, hash_stream, mismatch, short
from modelroll.settings import Settings

SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
FORMAT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,15}$")


@dataclass(frozen=True, slots=True)
class StoredArtifact:
    """What the store holds for one artifact; `relpath` is relative to the store root."""

    sha256: str
    size_bytes: int
    format: str
    relpath: str


def check_sha256(value: str) -> str:
    """Refuse anything but 64 lowercase hex digits, so an id can never name a path outside the store."""
    if not isinstance(value, str) or not SHA256_PATTERN.fullmatch(value):
        raise InvalidInput(f"artifact id {value!r} is not a sha256: expected 64 lowercase hex digits")
    return value


def check_format(value: str) -> str:
    if not isinstance(value, str) or not FORMAT_PATTERN.fullmatch(value):
        raise InvalidInput(
            f"artifact format {value!r} is not valid: use 1-16 lowercase letters, digits, '_' or '-' (e.g. onnx, hf)"
        )
    return value


class _HashingWriter:
    """A write-only file object that hashes and counts what passes through, then hands it on (or drops it)."""

    def __init__(self, target: BinaryIO | None) -> None:
        self._hash = hashlib.sha256()
        self._target = target
        self.size_bytes = 0

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self.size_bytes += len(data)
        if self._target is not None:
            self._target.write(data)
        return len(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _tree_entries(source: Path) -> list[tuple[str, Path, bool]]:
    """(posix relative path, path, is_dir) of every entry under `source`, sorted; links are refused."""
    entries: list[tuple[str, Path, bool]] = []
    for dirpath, dirnames, filenames in os.walk(source):
        for name in (*dirnames, *filenames):
            path = Path(dirpath) / name
            mode = path.lstat().st_mode
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise InvalidInput(
                    f"{path} is not a regular file or folder (a link?): stored folders may hold only files and folders"
                )
            entries.append((path.relative_to(source).as_posix(), path, stat.S_ISDIR(mode)))
    entries.sort(key=lambda entry: entry[0])
    return entries


def write_tree_tar(source: Path, sink: _HashingWriter) -> None:
    """The same bytes for the same folder contents anywhere: sorted names, zero times and owners, two modes."""
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for relpath, path, is_dir in _tree_entries(source):
            info = tarfile.TarInfo(relpath)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if is_dir:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
                continue
            info.mode = 0o755 if path.stat().st_mode & stat.S_IXUSR else 0o644
            with path.open("rb") as data:
                info.size = os.fstat(data.fileno()).st_size
                tar.addfile(info, data)


def _tree_sha256(folder: Path) -> str | None:
    sink = _HashingWriter(None)
    try:
        write_tree_tar(folder, sink)
    except (InvalidInput, OSError):
        return None
    return sink.hexdigest()


class ArtifactStore:
    """Files and folders by content hash under one root; writes are atomic (temp file + rename)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @classmethod
    def from_settings(cls, settings: Settings) -> ArtifactStore:
        return cls(settings.effective_artifacts_dir)

    def _blob_path(self, sha256: str) -> Path:
        check_sha256(sha256)
        root = self.root.resolve()
        path = (root / sha256[:2] / sha256).resolve()
        if not path.is_relative_to(root):
            raise InvalidInput(f"artifact {short(sha256)} resolves outside the store at {root}")
        return path

    def _existing(self, sha256: str) -> Path:
        path = self._blob_path(sha256)
        if not path.is_file():
            raise NotFound(
                f"artifact {short(sha256)} is not in the artifact store at {self.root}: re-register the model"
            )
        return path

    def _ingest(self, fill: Callable[[_HashingWriter], object], fmt: str) -> StoredArtifact:
        tmp_dir = self.root / ".tmp"
        try:
            tmp_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=tmp_dir, prefix="put-")
        except OSError as exc:
            raise Unavailable(f"cannot write to the artifact store at {self.root}: {exc.strerror}") from None
        try:
            with os.fdopen(fd, "wb") as raw:
                writer = _HashingWriter(raw)
                fill(writer)
                raw.flush()
                os.fsync(raw.fileno())
            sha256 = writer.hexdigest()
            dest = self._blob_path(sha256)
            if not (dest.is_file() and self._matches(dest, sha256)):  # stored once; a damaged copy is repaired
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(tmp_name, 0o444)
                os.replace(tmp_name, dest)
            else:
                os.utime(dest)  # stored again: `gc` gives it the grace of a new file until its row commits
        except OSError as exc:
            raise Unavailable(f"cannot write to the artifact store at {self.root}: {exc.strerror or exc}") from None
        finally:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
        return StoredArtifact(sha256, writer.size_bytes, fmt, dest.relative_to(self.root.resolve()).as_posix())

    @staticmethod
    def _matches(path: Path, sha256: str) -> bool:
        with path.open("rb") as stream:
            return hash_stream(stream) == sha256

    def put_bytes(self, data: bytes, fmt: str) -> StoredArtifact:
        check_format(fmt)
        return self._ingest(lambda sink: sink.write(data), fmt)

    def put_file(self, path: Path, fmt: str) -> StoredArtifact:
        """Store a file, or a folder as a deterministic tar; the same content always gets the same sha256."""
        check_format(fmt)
        source = Path(path)
        if source.is_dir():
            _tree_entries(source)  # refuse links before writing anything
            return self._ingest(lambda sink: write_tree_tar(source, sink), fmt)
        if not source.exists():
            raise InvalidInput(f"no file at {source}")
        if not source.is_file():
            raise InvalidInput(f"{source} is not a regular file or folder")
        try:
            stream = source.open("rb")
        except OSError as exc:
            raise InvalidInput(f"cannot read {source}: {exc.strerror}") from None
        with stream:
            return self._ingest(lambda sink: shutil.copyfileobj(stream, sink, CHUNK_BYTES), fmt)

    def exists(self, sha256: str) -> bool:
        """Whether the store has a file for this hash (not verified: loading verifies)."""
        return self._blob_path(sha256).is_file()

    def path_of(self, sha256: str) -> Path:
        """The stored file, after checking its bytes still hash to `sha256`."""
        path = self._existing(sha256)
        with path.open("rb") as stream:
            check(hash_stream(stream), sha256)
        return path

    def stored_path(self, sha256: str) -> Path:
        """Where the stored file is, not checked here: for a loader that checks the very bytes it loads
        (`integrity.read_verified`), as the router's runners do on every load and restart."""
        return self._existing(sha256)

    def open(self, sha256: str) -> BinaryIO:
        """An open, verified binary file; the check reads through the same handle the caller gets."""
        stream = self._existing(sha256).open("rb")
        try:
            check(hash_stream(stream), sha256)
        except Tampered:
            stream.close()
            raise
        stream.seek(0)
        return stream

    def read_bytes(self, sha256: str) -> bytes:
        data = self._existing(sha256).read_bytes()
        check(hashlib.sha256(data).hexdigest(), sha256)
        return data

    def tree_of(self, sha256: str) -> Path:
        """A stored folder, extracted once to root/.trees/<sha>; the tar and the extraction are both verified."""
        tar_path = self.path_of(sha256)
        if not tarfile.is_tarfile(tar_path):
            raise InvalidInput(f"artifact {short(sha256)} is a single file, not a stored folder: load it with path_of")
        target = self.root.resolve() / ".trees" / sha256
        if target.is_dir():
            if _tree_sha256(target) == sha256:
                return target
            shutil.rmtree(target)  # edited after extraction: extract afresh from the verified tar
        (self.root / ".tmp").mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(dir=self.root / ".tmp", prefix="tree-"))
        with tarfile.open(tar_path, mode="r:") as tar:
            tar.extractall(scratch, filter="data")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(scratch, target)
        except OSError:  # another process extracted it first
            shutil.rmtree(scratch, ignore_errors=True)
            if _tree_sha256(target) != sha256:
                raise mismatch(sha256) from None
        return target
