"""Per-image random generators keyed by name, so an image never depends on generation order."""

from __future__ import annotations

import hashlib

import numpy as np


def image_rng(seed: int, *key: str | int) -> np.random.Generator:
    """A generator for one image, derived from the run seed and a key such as (dataset, index)."""
    digest = hashlib.sha256("\0".join(map(str, key)).encode("utf-8")).digest()
    words = [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=words))
