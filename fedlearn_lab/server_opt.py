"""Adaptive server optimisers: the round's average change is a pseudo-gradient.

Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Algorithm 2
(https://arxiv.org/abs/2003.00295). With ``delta = aggregated - old`` (the average
change, which points downhill: the negative of a gradient) and the state ``(m, v)``::

    m <- beta1 m + (1 - beta1) delta
    v <- v + delta^2                                  "adagrad" (FedAdagrad)
    v <- beta2 v + (1 - beta2) delta^2                "adam"    (FedAdam)
    v <- v - (1 - beta2) delta^2 sign(v - delta^2)    "yogi"    (FedYogi)
    x <- old + lr m / (sqrt(v) + tau)

The state is returned, never kept. This follows Flower's strategies
(``flwr.serverapp.strategy.FedAdam``, ``FedYogi``, ``FedAdagrad`` in flwr 1.42) where
they read the paper differently:

- ``m`` and ``v`` start at zero (``state=None``); the paper asks for
  ``v_{-1} >= tau^2``. Pass ``state=(zeros, tau^2)`` to start as the paper does.
- FedAdam scales ``lr`` by Adam's bias correction ``sqrt(1 - beta2^(t+1)) /
  (1 - beta1^(t+1))``, where ``t = round_idx`` (1 for the first round): Flower's
  exponent ``server_round + 1``, one more than Kingma & Ba's. Algorithm 2 has no bias
  correction: ``bias_correction=False`` gives it as printed.
- Flower's FedAdagrad fixes ``beta1 = 0`` (no momentum); Algorithm 2, and this
  module, use ``beta1`` for all three. Pass ``beta1=0`` for Flower's FedAdagrad.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .config import SERVER_OPTS
from .weights import Weights, add, scale, sub

ServerOptState = tuple[Weights, Weights]  # (m, v): first and second moments

# v_new = rule(v, delta^2, beta2): the one line where the three optimisers differ.
SECOND_MOMENTS: dict[str, Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]]
SECOND_MOMENTS = {
    "adagrad": lambda v, d2, beta2: v + d2,
    "adam": lambda v, d2, beta2: beta2 * v + (1 - beta2) * d2,
    "yogi": lambda v, d2, beta2: v - (1 - beta2) * d2 * torch.sign(v - d2),
}


def server_opt_step(
    kind: str,
    old: Weights,
    aggregated: Weights,
    state: ServerOptState | None,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    tau: float,
    round_idx: int,
    bias_correction: bool = True,
) -> tuple[Weights, ServerOptState | None]:
    """Replace the move ``old -> aggregated`` by one step of the server optimiser.

    Returns ``(weights, (m, v))``; ``state=None`` means no step was taken yet.
    ``round_idx`` is the round being finished (1 for the first); it only enters
    FedAdam's bias correction. ``kind="none"`` returns ``aggregated`` and ``state``.
    """
    if kind == "none":
        return aggregated, state
    _check(kind, lr=lr, beta1=beta1, beta2=beta2, tau=tau, round_idx=round_idx)
    delta = sub(aggregated, old)
    if state is None:
        state = ({k: torch.zeros_like(d) for k, d in delta.items()},) * 2
    m = add(scale(state[0], beta1), scale(delta, 1 - beta1))
    rule = SECOND_MOMENTS[kind]
    v = {k: rule(state[1][k], d * d, beta2) for k, d in delta.items()}
    rate = lr
    if kind == "adam" and bias_correction:
        t = round_idx + 1  # Flower's exponent: see the module docstring
        rate = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
    new = {k: x + rate * m[k] / (v[k].sqrt() + tau) for k, x in old.items()}
    return new, (m, v)


def _check(
    kind: str, *, lr: float, beta1: float, beta2: float, tau: float, round_idx: int
) -> None:
    """Refuse what the formulas cannot take, naming the argument."""
    if kind not in SECOND_MOMENTS:
        raise ValueError(f"kind must be one of {SERVER_OPTS}, got {kind!r}")
    if not lr > 0:
        raise ValueError(f"lr must be a number > 0, got {lr!r}")
    if not tau > 0:
        raise ValueError(f"tau must be a number > 0, got {tau!r}")
    for name, beta in (("beta1", beta1), ("beta2", beta2)):
        if not 0 <= beta < 1:
            raise ValueError(f"{name} must be a number in [0, 1), got {beta!r}")
    if isinstance(round_idx, bool) or not isinstance(round_idx, int) or round_idx < 1:
        raise ValueError(f"round_idx must be an integer >= 1, got {round_idx!r}")
