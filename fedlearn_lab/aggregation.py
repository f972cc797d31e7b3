"""Aggregation: from the devices' returned weights to one aggregation model.

Every aggregator takes ``[(weights, num_examples)]``, or the same as :class:`Stacked`
(what a round passes: no per-device copies), and returns weights. FedAvg
(McMahan et al. 2017, https://arxiv.org/abs/1602.05629) weights devices by their
sample counts. The robust rules ignore the counts: an attacker could lie about them.
Coordinate-wise median and trimmed mean follow Yin et al. 2018
(https://arxiv.org/abs/1803.01498), Krum follows Blanchard et al. 2017
(https://papers.nips.cc/paper/6617).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from .weights import Updates, Weights, as_stacked, weighted_mean


class Stacked(NamedTuple):
    """The devices' weights, stacked or as a list, and their sample counts."""

    weights: Updates
    counts: Sequence[int]


Pairs = Sequence[tuple[Weights, int]]
Aggregator = Callable[[Pairs | Stacked], Weights]


def fedavg(updates: Pairs | Stacked) -> Weights:
    """FedAvg (McMahan et al. 2017): the average of the devices' weights, each
    weighted by its number of training samples."""
    weights, counts = _stacked(updates, "fedavg")
    return weighted_mean(weights, counts)


def median(updates: Pairs | Stacked) -> Weights:
    """Coordinate-wise median of the devices' weights (the mean of the two middle
    values when their number is even)."""
    weights, counts = _stacked(updates, "median")
    n = len(counts)
    return {
        k: v.sort(dim=0).values[[(n - 1) // 2, n // 2]].mean(dim=0)
        for k, v in weights.items()
    }


def trimmed_mean(updates: Pairs | Stacked, *, trim: float = 0.2) -> Weights:
    """Coordinate-wise mean after dropping the ``floor(trim * n)`` largest and as many
    smallest values; ``trim`` in [0, 0.5)."""
    weights, counts = _stacked(updates, "trimmed_mean")
    if not 0 <= trim < 0.5:
        raise ValueError(f"trim must be in [0, 0.5), got {trim!r}")
    n = len(counts)
    cut = int(trim * n)
    return {
        k: v.sort(dim=0).values[cut : n - cut].mean(dim=0) for k, v in weights.items()
    }


def krum(updates: Pairs | Stacked, *, num_malicious: int | None = None) -> Weights:
    """Krum: the one device's weights closest (summed squared distance) to their
    ``n - f - 2`` nearest others, where ``f = num_malicious`` defaults to the most
    Krum tolerates, ``(n - 3) // 2``."""
    weights, counts = _stacked(updates, "krum")
    n = len(counts)
    f = max(0, (n - 3) // 2) if num_malicious is None else num_malicious
    if not 0 <= f <= max(0, (n - 3) // 2):
        raise ValueError(
            f"num_malicious must be in [0, (n - 3) // 2] for n={n}, got {f}"
        )
    flat = torch.cat([v.flatten(1) for v in weights.values()], 1)
    dist = torch.cdist(flat.double(), flat.double()).square()  # (n, n)
    neighbours = max(1, min(n - 1, n - f - 2))
    # Column 0 of each sorted row is the device's zero distance to itself.
    scores = dist.sort(dim=1).values[:, 1 : 1 + neighbours].sum(dim=1)
    best = int(scores.argmin())
    return {k: v[best].clone() for k, v in weights.items()}


AGGREGATORS: dict[str, Aggregator] = {
    "fedavg": fedavg,
    "median": median,
    "trimmed_mean": trimmed_mean,
    "krum": krum,
}


def _stacked(updates: Pairs | Stacked, name: str) -> tuple[Weights, Sequence[int]]:
    """The weights stacked along a leading device axis, and the counts."""
    if not isinstance(updates, Stacked):
        updates = Stacked([w for w, _ in updates], [n for _, n in updates])
    if len(updates.counts) == 0:
        raise ValueError(f"{name} needs at least one (weights, num_examples) pair")
    return as_stacked(updates.weights), updates.counts
