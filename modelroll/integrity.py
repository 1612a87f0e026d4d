"""The one integrity check every artifact load goes through: bytes are used only after they hash to their sha256.

Light on purpose (hashlib and the error tree only): the router's runner child imports it before it
measures its own memory.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO

from modelroll.errors import NotFound, Tampered

CHUNK_BYTES = 1 << 20


def short(sha256: str) -> str:
    return f"{sha256[:12]}…"


def mismatch(sha256: str) -> Tampered:
    """The error of every failed check; its message is the reason routers and the controller report."""
    return Tampered(f"artifact hash mismatch: the bytes of artifact {short(sha256)} changed on disk since they "
                    "were stored (tampered or damaged); re-register the model")


def check(actual_sha256: str, expected_sha256: str) -> None:
    if actual_sha256 != expected_sha256:
        raise mismatch(expected_sha256)


def hash_stream(stream: BinaryIO) -> str:
    digest = hashlib.sha256()
    while chunk := stream.read(CHUNK_BYTES):
        digest.update(chunk)
    return digest.hexdigest()


def read_verified(path: Path, sha256: str | None) -> tuple[bytes, str]:
    """The file's bytes and their sha256, checked against `sha256` when one is recorded (None: the caller pins
    the returned hash, so that every later load of the same file is checked against the first).

    The caller loads these very bytes, so nothing can change between the check and the load.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise NotFound(f"artifact file {path} is gone: re-register the model") from None
    actual = hashlib.sha256(data).hexdigest()
    if sha256 is not None:
        check(actual, sha256)
    return data, actual
