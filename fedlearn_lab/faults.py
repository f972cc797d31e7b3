"""Device faults: which sampled devices return in time.

A sampled device is lost when it drops out (probability ``dropout``, drawn afresh each
round) or when it is too slow for the round's ``deadline``. Stragglers are *dropped*,
not asked for partial work: the server closes the round at the deadline and ignores
late arrivals. Time is simulated. A device's local-training time is its number of
samples divided by its speed; speeds are drawn once per device from a lognormal with
sigma ``SPEED_SIGMA``, and times are given in multiples of the median device's, so
``deadline=1`` loses half the devices (on the default digits split, 1.5 loses about a
quarter, 2 a sixth, 3 none).
The slow devices are the same every round, so a deadline biases the model against
their data.

What the returned devices send is then screened by the server
(:func:`fedlearn_lab.aggregation.screen_updates`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .config import FedConfig
from .seeding import numpy_rng

SPEED_SIGMA = 0.5


def device_times(sizes: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Simulated local-training time of every device, in multiples of the median."""
    speeds = rng.lognormal(0.0, SPEED_SIGMA, len(sizes))
    times = np.asarray(sizes, dtype=float) / speeds
    return times / np.median(times)


def arrivals(
    sampled: np.ndarray, sizes: Sequence[int], cfg: FedConfig, round_idx: int
) -> tuple[np.ndarray, dict[int, str]]:
    """Split the sampled devices into those that return and those lost.

    Returns the returned ids and ``{device_id: "dropout" | "deadline"}`` for the lost
    ones. A device that drops out is reported as such even if it was also too slow.
    """
    lost: dict[int, str] = {}
    if cfg.deadline is not None:
        late = device_times(sizes, numpy_rng(cfg.seed, "speed"))[sampled] > cfg.deadline
        lost.update((int(k), "deadline") for k in sampled[late])
    if cfg.dropout > 0:
        gone = (
            numpy_rng(cfg.seed, "dropout", round_idx).random(len(sampled)) < cfg.dropout
        )
        lost.update((int(k), "dropout") for k in sampled[gone])
    returned = np.array([k for k in sampled if int(k) not in lost], dtype=sampled.dtype)
    return returned, lost
