"""A real, offline, deterministic English text set (docstrings of Python's standard library), and its tokenization.

Used to calibrate and evaluate sentence encoders without any download. Sentences are parsed
(never imported), filtered to prose, de-duplicated, ordered by hash and split disjointly
into "calibration" and "eval".
"""

from __future__ import annotations

import ast
import functools
import hashlib
import os
import re
import sysconfig
from pathlib import Path
from typing import Any

import numpy as np

from modelroll.errors import InvalidInput
from optimizer.sources import ENCODER_INPUTS

SPLITS = ("calibration", "eval")
_SENTENCE_END = re.compile(r"(?<=[a-z0-9)][.!?])\s+(?=[A-Z])")
_PROSE = re.compile(r"^[A-Za-z][A-Za-z0-9 ,;:'\"()/.!?-]+$")


def _docstrings(source: str) -> list[str]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node)
            if doc:
                found.append(doc)
    return found


def _sentences(doc: str) -> list[str]:
    out = []
    for paragraph in re.split(r"\n\s*\n", doc):
        text = " ".join(paragraph.split())
        for sentence in _SENTENCE_END.split(text):
            words = sentence.split()
            if 6 <= len(words) <= 32 and _PROSE.match(sentence) and sentence.endswith("."):
                out.append(sentence)
    return out


@functools.lru_cache(maxsize=2)  # pure function of a read-only folder; parsing it takes ~2 s
def _all_sentences(stdlib: Path) -> tuple[str, ...]:
    seen: dict[str, str] = {}
    for path in sorted(stdlib.glob("*.py")):
        for doc in _docstrings(path.read_text(encoding="utf-8", errors="replace")):
            for sentence in _sentences(doc):
                seen.setdefault(sentence.lower(), sentence)
    # Order by content hash: deterministic, and mixes modules so any prefix covers many topics.
    return tuple(sorted(seen.values(), key=lambda s: hashlib.sha256(s.encode()).hexdigest()))


def text_corpus(n: int = 512, split: str = "eval", stdlib: Path | None = None) -> list[str]:
    """`n` sentences of the given split ("calibration" is ~1/4 of all, "eval" the rest; disjoint)."""
    if split not in SPLITS:
        raise InvalidInput(f"unknown text split {split!r}: accepted {list(SPLITS)}")
    root = Path(stdlib) if stdlib is not None else Path(sysconfig.get_paths()["stdlib"])
    chosen = [
        s for s in _all_sentences(root)
        if (hashlib.sha256(s.encode()).digest()[1] < 64) == (split == "calibration")
    ]
    if n < 1 or n > len(chosen):
        raise InvalidInput(f"the {split} text split has {len(chosen)} sentences: ask for 1..{len(chosen)}, got {n}")
    return chosen[:n]


def load_tokenizer(folder: Path) -> Any:
    """The tokenizer saved beside a local encoder (local files only)."""
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def tokenize(tokenizer: Any, texts: list[str], max_length: int = 128) -> dict[str, np.ndarray]:
    """Encode `texts` padded to the longest (at most `max_length`): int64 input_ids and attention_mask."""
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    return {name: np.asarray(encoded[name], dtype=np.int64) for name in ENCODER_INPUTS}


def text_batches(tokenizer: Any, texts: list[str], batch_size: int = 32, max_length: int = 128,
                 *, same_length: bool = False) -> list[dict[str, np.ndarray]]:
    """`texts` tokenized in consecutive batches, each padded to its own longest sentence, or with
    `same_length` all padded to the longest of all (histogram calibration needs equal shapes)."""
    if same_length:
        whole = tokenize(tokenizer, texts, max_length)
        return [{k: v[i : i + batch_size] for k, v in whole.items()} for i in range(0, len(texts), batch_size)]
    return [tokenize(tokenizer, texts[i : i + batch_size], max_length) for i in range(0, len(texts), batch_size)]
