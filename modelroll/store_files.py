"""The artifact store as gc sees it: what lies on disk (stored files, extracted folders, temporary files) and
deleting it. Everything here tolerates files that come and go meanwhile: the store is in use while gc runs."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from modelroll import garbage

log = logging.getLogger(__name__)

SHA256 = re.compile(r"^[0-9a-f]{64}$")
SHARD = re.compile(r"^[0-9a-f]{2}$")


def _size(path: Path) -> int:
    try:
        return path.lstat().st_size
    except FileNotFoundError:
        return 0


def _entries(paths: list[Path]) -> list[garbage.Entry]:
    """Each path's size (a folder's files summed) and time; one removed meanwhile (a put's temporary file
    renamed into place, a folder extracted) is left out."""
    found = []
    for path in paths:
        try:
            stat = path.lstat()
        except FileNotFoundError:
            continue
        size = stat.st_size
        if path.is_dir() and not path.is_symlink():
            size = sum(_size(Path(root) / f) for root, _, files in os.walk(path) for f in files)
        found.append(garbage.Entry(path.name, size, datetime.fromtimestamp(stat.st_mtime, tz=UTC)))
    return found


def listing(root: Path) -> tuple[list[garbage.Entry], list[garbage.Entry], list[garbage.Entry]]:
    """Stored files (root/ab/ab…), extracted folders (root/.trees/<sha>) and temporary files (root/.tmp/*)."""
    stored = [path for shard in _children(root) if SHARD.fullmatch(shard.name) for path in _children(shard)
              if SHA256.fullmatch(path.name) and path.name.startswith(shard.name)]
    trees = [path for path in _children(root / ".trees") if SHA256.fullmatch(path.name)]
    return _entries(stored), _entries(trees), _entries(_children(root / ".tmp"))


def _children(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


@dataclass
class Deleter:
    """Deletes what gc decided; a failure is kept (and logged) for the report, never raised."""

    root: Path
    errors: list[str] = field(default_factory=list)

    def remove(self, path: Path) -> bool:
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            self.errors.append(f"could not delete {path}: {exc.strerror or exc}")
            log.warning("gc could not delete path=%s why=%s", path, exc)
            return False
        if path.parent.parent == self.root and SHARD.fullmatch(path.parent.name):
            with contextlib.suppress(OSError):  # the shard folder, once empty
                path.parent.rmdir()
        return True
