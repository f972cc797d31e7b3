"""State-dict arithmetic. ``Weights`` maps parameter names to tensors; nothing here
changes its inputs in place.

A *delta* is always ``local - global`` (the direction a device moved the model).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Weights = dict[str, torch.Tensor]
# Several devices' weights: a list, or stacked along a leading device axis.
Updates = Sequence[Weights] | Weights


def add(a: Weights, b: Weights) -> Weights:
    """``a + b``."""
    return {k: a[k] + b[k] for k in a}


def sub(a: Weights, b: Weights) -> Weights:
    """``a - b`` (with ``a`` local and ``b`` global this is the device's delta)."""
    return {k: a[k] - b[k] for k in a}


def scale(a: Weights, factor: float) -> Weights:
    """``factor * a``."""
    return {k: v * factor for k, v in a.items()}


def clone(a: Weights) -> Weights:
    """A detached copy."""
    return {k: v.detach().clone() for k, v in a.items()}


def weighted_mean(weights: Updates, coefficients: Sequence[float]) -> Weights:
    """``sum_i c_i w_i / sum_i c_i``: the average FedAvg takes."""
    if count(weights) == 0 or count(weights) != len(coefficients):
        raise ValueError("weighted_mean needs as many coefficients as weights (>= 1)")
    if min(coefficients) < 0 or sum(coefficients) <= 0:
        raise ValueError("weighted_mean coefficients must be >= 0 with a positive sum")
    rows = as_stacked(weights)
    c = torch.as_tensor(coefficients, dtype=torch.float64)
    c = (c / c.sum()).to(next(iter(rows.values())).dtype)
    return {k: torch.tensordot(c, v, 1) for k, v in rows.items()}


def stack(weights: Sequence[Weights]) -> Weights:
    """Stack per-device weights along a new leading device axis."""
    return {k: torch.stack([w[k] for w in weights]) for k in weights[0]}


def unstack(stacked: Weights) -> list[Weights]:
    """Inverse of :func:`stack`."""
    rows = zip(*(v.unbind() for v in stacked.values()), strict=True)
    return [dict(zip(stacked, row, strict=True)) for row in rows]


def count(updates: Updates) -> int:
    """Number of devices in ``updates``."""
    if isinstance(updates, dict):
        return next(iter(updates.values())).shape[0] if updates else 0
    return len(updates)


def as_stacked(updates: Updates) -> Weights:
    """``updates`` stacked along a leading device axis (as given if they are)."""
    return updates if isinstance(updates, dict) else stack(updates)


def take(updates: Updates, rows: Sequence[int]) -> Weights:
    """The devices ``rows`` (at least one) of ``updates``, stacked; views, not a copy,
    if ``updates`` is stacked and ``rows`` are consecutive."""
    if not isinstance(updates, dict):
        return stack([updates[i] for i in rows])
    first = rows[0]
    if list(rows) == list(range(first, first + len(rows))):
        return {k: v[first : first + len(rows)] for k, v in updates.items()}
    index = torch.tensor(rows, dtype=torch.long)
    return {k: v[index] for k, v in updates.items()}


def weights_bytes(weights: Weights) -> int:
    """Bytes of all tensors in ``weights``, at their own dtype (one transfer's size)."""
    return sum(v.numel() * v.element_size() for v in weights.values())
