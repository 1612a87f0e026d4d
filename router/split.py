"""Weighted sticky split: a routing key hashes (blake2b) to a bucket in [0, 10000) and buckets map to variants.

The fallback variant (the baseline) owns the top of the range and the others are laid out
from 0 in name order, so raising a candidate's weight (and lowering the baseline's) only
moves keys from the baseline to that candidate: a key on the candidate stays there.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Mapping
from hashlib import blake2b

BUCKETS = 10_000


def bucket_of(model: str, key: str) -> int:
    """Stable across processes, replicas and Python versions (unlike `hash()`)."""
    digest = blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8, salt=_salt(model)).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def _salt(model: str) -> bytes:
    # The model in the salt keeps a user's position independent across models.
    raw = model.encode("utf-8")
    return blake2b(raw, digest_size=16).digest() if len(raw) > 16 else raw


class Split:
    """Bucket layout of one model's weights; built once per split change, read per request."""

    __slots__ = ("_bounds", "_names", "fallback", "weights")

    def __init__(self, weights: Mapping[str, float], fallback: str) -> None:
        if fallback not in weights:
            raise ValueError(f"fallback variant {fallback!r} is not in the split {dict(weights)}")
        self.weights = dict(weights)
        self.fallback = fallback
        order = [*sorted(n for n in weights if n != fallback), fallback]
        bounds: list[int] = []
        names: list[str] = []
        edge = 0.0
        for name in order:
            pct = weights[name]
            if pct <= 0:
                continue
            edge += pct * (BUCKETS / 100.0)
            bounds.append(min(BUCKETS, round(edge)))
            names.append(name)
        bounds[-1] = BUCKETS
        self._bounds = tuple(bounds)
        self._names = tuple(names)

    def variant_for_bucket(self, bucket: int) -> str:
        return self._names[bisect_right(self._bounds, bucket)]

    def choose(self, model: str, key: str | None) -> str:
        if len(self._names) == 1:
            return self._names[0]
        bucket = bucket_of(model, key) if key is not None else random.randrange(BUCKETS)
        return self._names[bisect_right(self._bounds, bucket)]
