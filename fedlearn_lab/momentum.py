"""Server momentum: the server remembers the direction the global model has been moving.

Both kinds turn a move ``delta = new - old`` into a step taken from ``old``, with the
momentum ``m`` kept in the server state (never on an object), and return
``(old + m, m)``:

- ``"feddum"`` (FedDUM, https://arxiv.org/abs/2408.05678): ``m <- beta m + (1 - beta)
  delta``, applied after aggregation and again after the server update. As in the
  authors' released code, the very first step sets ``m = delta``.
- ``"fedavgm"`` (FedAvgM, Hsu et al. 2019, https://arxiv.org/abs/1909.06335):
  ``m <- beta m + delta`` with server learning rate 1, after aggregation only.
"""

from __future__ import annotations

from .config import SERVER_MOMENTUMS
from .weights import Weights, add, scale, sub


def momentum_step(
    kind: str, old: Weights, new: Weights, momentum: Weights | None, *, beta: float
) -> tuple[Weights, Weights | None]:
    """Replace the move ``old -> new`` by a momentum step; returns (weights, momentum).

    ``momentum=None`` means no step was taken yet. ``kind="none"`` returns ``new``
    and the momentum unchanged.
    """
    if kind == "none":
        return new, momentum
    delta = sub(new, old)
    if momentum is None:
        updated = delta
    elif kind == "feddum":
        updated = add(scale(momentum, beta), scale(delta, 1 - beta))
    elif kind == "fedavgm":
        updated = add(scale(momentum, beta), delta)
    else:
        raise ValueError(f"kind must be one of {SERVER_MOMENTUMS}, got {kind!r}")
    return add(old, updated), updated
