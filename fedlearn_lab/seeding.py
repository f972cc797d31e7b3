"""Independent random generators derived from (seed, stream name, indices).

No function in the package touches global random state: every random choice takes
a generator made here, so the same seed gives the same run in any process.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch


def _entropy(seed: int, stream: str, indices: tuple[int, ...]) -> list[int]:
    # crc32 is stable across processes, unlike hash(str).
    return [seed, zlib.crc32(stream.encode()), *indices]


def numpy_rng(seed: int, stream: str, *indices: int) -> np.random.Generator:
    """A numpy generator for one named stream, e.g. ``numpy_rng(0, "sample", 3)``."""
    return np.random.default_rng(
        np.random.SeedSequence(_entropy(seed, stream, indices))
    )


def torch_generator(seed: int, stream: str, *indices: int) -> torch.Generator:
    """A CPU torch generator for one named stream, independent of all others."""
    sequence = np.random.SeedSequence(_entropy(seed, stream, indices))
    state = int(sequence.generate_state(1, dtype=np.uint64)[0]) >> 1  # fits int64
    return torch.Generator().manual_seed(state)
