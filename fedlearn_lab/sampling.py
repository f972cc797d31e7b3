"""Which devices take part in a round."""

from __future__ import annotations

import math

import numpy as np


def num_sampled(num_devices: int, participation: float) -> int:
    """Devices per round: ``participation * num_devices`` rounded half up, at least 1.

    The product is first rounded to 9 decimals so that float noise such as
    ``0.15 * 10 = 1.4999999999999998`` rounds as a person would (to 2).
    """
    return max(1, math.floor(round(participation * num_devices, 9) + 0.5))


def sample_devices(
    num_devices: int, participation: float, rng: np.random.Generator
) -> np.ndarray:
    """Draw :func:`num_sampled` distinct device ids uniformly, returned sorted."""
    if not 0 < participation <= 1:
        raise ValueError(f"participation must be in (0, 1], got {participation!r}")
    count = num_sampled(num_devices, participation)
    return np.sort(rng.choice(num_devices, size=count, replace=False))
