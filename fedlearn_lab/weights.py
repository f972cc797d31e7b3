"""State-dict arithmetic. ``Weights`` maps parameter names to tensors; nothing here
changes its inputs in place.

Words used across the package:

- *weights*: a model's full parameters, ``{name: tensor}``.
- *update*: what a device returns after local training: its new weights (never a
  difference). Inside a round the updates of all returned devices are *stacked*,
  ``{name: (devices, ...)}``, row ``i`` from the ``i``-th returned device.
- *delta*: always ``local - global`` (the direction a device moved the model).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Weights = dict[str, torch.Tensor]


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


def stack(weights: Sequence[Weights]) -> Weights:
    """Stack per-device weights along a new leading device axis."""
    return {k: torch.stack([w[k] for w in weights]) for k in weights[0]}


def unstack(stacked: Weights) -> list[Weights]:
    """Inverse of :func:`stack`."""
    rows = zip(*(v.unbind() for v in stacked.values()), strict=True)
    return [dict(zip(stacked, row, strict=True)) for row in rows]


def weights_bytes(weights: Weights) -> int:
    """Bytes of all tensors in ``weights``, at their own dtype (one transfer's size)."""
    return sum(v.numel() * v.element_size() for v in weights.values())
