"""Which files on the server a caller may make modelroll read: the one input-path policy.

A remote caller (the ops API) names a file only by a path relative to the input root (`MODELROLL_INPUT_DIR`,
default `<home>/inputs`) that resolves, symlinks followed, to a file inside it; anything else (an absolute path, a
`..` segment, a symlink out of the root) gets one and the same refusal whether or not something exists there, so the
API never tells what is on the host. Data from elsewhere comes as content already in the artifact store, named by
its sha256 (`eval_sha256`). The CLI runs as its user on their own machine and reads what they can read (`LOCAL`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from modelroll.errors import InvalidInput, NotFound

# Segments of letters, digits, '_', '.', '-' that start with a letter, digit or '_' (so never '.', '..' or empty),
# joined by '/', never starting with one; the OpenAPI document publishes the same pattern.
_RELATIVE = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}(/[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}){0,15}"
RELATIVE_NPZ_PATTERN = _RELATIVE + r"\.npz$"
RELATIVE_ONNX_PATTERN = _RELATIVE + r"\.onnx$"  # a Model document's files (POST /v1/apply)
_PATTERNS = {".npz": re.compile(RELATIVE_NPZ_PATTERN), ".onnx": re.compile(RELATIVE_ONNX_PATTERN)}
_EXAMPLES = {".npz": "digits/eval.npz", ".onnx": "digits/model.onnx"}
_EVAL_DATA = "or give eval_sha256 of eval data already in the artifact store"


@dataclass(frozen=True, slots=True)
class InputPolicy:
    """`root` None: any local path (the CLI on its user's machine); else only files inside `root`."""

    root: Path | None

    @classmethod
    def within(cls, root: Path) -> InputPolicy:
        return cls(Path(root))

    def resolve(self, field: str, raw: str, *, suffix: str = ".npz", otherwise: str = _EVAL_DATA) -> Path:
        """The file `raw` names, or InvalidInput (outside what may be read) / NotFound (no such file inside it).

        `suffix`: the kind of file (.npz eval data, .onnx models); `otherwise`: what a caller does instead."""
        if self.root is None:
            return Path(raw).expanduser().resolve()
        refused = InvalidInput(
            f"{field} must name an {suffix} file inside the controller's input root (MODELROLL_INPUT_DIR) by a "
            f"relative path such as {_EXAMPLES[suffix]!r} (segments of letters, digits, '_', '.', '-'; no '..', no "
            f"absolute path), {otherwise}; got {raw[:200]!r}")
        if not isinstance(raw, str) or not _PATTERNS[suffix].fullmatch(raw):
            raise refused
        root = self.root.resolve()
        try:
            target = (root / raw).resolve()
        except (OSError, RuntimeError):  # a symlink loop, a component that is not a folder: same answer as outside
            raise refused from None
        if not target.is_relative_to(root):  # a symlink out of the root: same answer, existing target or not
            raise refused
        if not target.is_file():
            raise NotFound(f"{field} {raw!r}: no such {suffix} file in the controller's input root "
                           f"(MODELROLL_INPUT_DIR); copy it there first, {otherwise}")
        return target


LOCAL = InputPolicy(None)
