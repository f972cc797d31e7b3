"""Aggregation: from the devices' returned weights to one aggregation model.

First the server screens what came back (:func:`screen_updates`): an update with the
wrong form, NaN/Inf, or a change far larger than the round's others is left out.
Then an aggregator combines the rest. Every aggregator takes ``[(weights,
num_examples)]``, or the same as :class:`Stacked` (what a round passes: the weights
stacked along a leading device axis), and returns weights. FedAvg (McMahan et al.
2017, https://arxiv.org/abs/1602.05629) weights devices by their sample counts. The
robust rules ignore the counts: an attacker could lie about them. Coordinate-wise
median and trimmed mean follow Yin et al. 2018 (https://arxiv.org/abs/1803.01498),
Krum follows Blanchard et al. 2017 (https://papers.nips.cc/paper/6617).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch

from .weights import Weights, stack

_GROUP_BYTES = 4 << 20  # see _finite_and_norms


class Stacked(NamedTuple):
    """The devices' weights stacked along a leading device axis, and their counts."""

    weights: Weights
    counts: Sequence[int]


Pairs = Sequence[tuple[Weights, int]]
Aggregator = Callable[[Pairs | Stacked], Weights]


def fedavg(updates: Pairs | Stacked) -> Weights:
    """FedAvg (McMahan et al. 2017): ``sum_k n_k w_k / sum_k n_k``, the average of the
    devices' weights ``w_k``, each weighted by its number of training samples
    ``n_k``."""
    weights, counts = _stacked(updates, "fedavg")
    if min(counts) < 0 or sum(counts) <= 0:
        raise ValueError("fedavg's sample counts must be >= 0 with a positive sum")
    c = torch.as_tensor(counts, dtype=torch.float64)
    c = (c / c.sum()).to(next(iter(weights.values())).dtype)
    return {k: torch.tensordot(c, v, 1) for k, v in weights.items()}


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
    weights, counts = updates if isinstance(updates, Stacked) else _from_pairs(updates)
    if len(counts) == 0:
        raise ValueError(f"{name} needs at least one (weights, num_examples) pair")
    return weights, counts


def _from_pairs(pairs: Pairs) -> Stacked:
    """``[(weights, num_examples)]`` as :class:`Stacked`."""
    if not pairs:
        return Stacked({}, [])
    return Stacked(stack([w for w, _ in pairs]), [n for _, n in pairs])


def validate_update(update: object, reference: Weights) -> str | None:
    """Why ``update`` cannot be aggregated with ``reference`` (the global weights), or
    None if it can: ``"keys"``, ``"shape"``, ``"dtype"`` or ``"non-finite"``."""
    reason = _form(update, reference)
    if reason is None and not all(bool(v.isfinite().all()) for v in update.values()):
        return "non-finite"
    return reason


def _form(update: object, reference: Weights) -> str | None:
    """:func:`validate_update` without the finiteness check."""
    if not isinstance(update, dict) or update.keys() != reference.keys():
        return "keys"
    for name, ref in reference.items():
        value = update[name]
        if not isinstance(value, torch.Tensor) or value.shape != ref.shape:
            return "shape"
        if value.dtype != ref.dtype:
            return "dtype"
    return None


def delta_norm(update: Weights, reference: Weights) -> float:
    """Euclidean norm of ``update - reference`` over all parameters."""
    squares = [
        (update[k].double() - reference[k].double()).square().sum() for k in reference
    ]
    return float(torch.stack(squares).sum().sqrt())


def screen_updates(
    updates: Weights, reference: Weights, *, max_norm_ratio: float | None
) -> list[str | None]:
    """One reason per update stacked in ``updates`` (None = accepted): ``"non-finite"``
    for NaN or Inf, ``"norm"`` for a delta norm above ``max_norm_ratio`` times the
    median delta norm of the round's finite updates (None switches that rule off).

    The default ratio, 100, only catches garbage: honest devices on digits reached 25
    times the median under heavy quantity skew (``quantity_skew=3``,
    ``local_lr=0.5``) and under 3 with the default config; lower it to catch boosted
    updates. Stacked updates all have the global model's form; weights that arrive
    one by one (a Flower reply, a checkpoint) are checked with
    :func:`validate_update` first.

    The norms are computed for all updates at once (one by one, this would cost more
    than the vectorized engine's local training), in groups of a few MiB of float64.
    The weights are float32, so their squares cannot overflow float64: a norm is
    finite exactly when its update is.
    """
    norms = []  # delta norms, in groups of a few MiB of float64 (see below)
    size = max(1, _GROUP_BYTES // (8 * sum(v.numel() for v in reference.values())))
    for start in range(0, next(iter(updates.values())).shape[0], size):
        squares = [
            v[start : start + size].to(torch.float64, copy=True).sub_(reference[k])
            for k, v in updates.items()
        ]
        total = torch.stack([d.square_().flatten(1).sum(1) for d in squares]).sum(0)
        norms += total.sqrt().tolist()  # NaN or Inf for a non-finite update
    finite = [n for n in norms if math.isfinite(n)]
    limit = math.inf
    if max_norm_ratio is not None and finite:
        limit = max_norm_ratio * float(np.median(finite))
    return [
        "non-finite" if not math.isfinite(n) else "norm" if n > limit else None
        for n in norms
    ]
