"""Local training on the sampled devices: plain minibatch SGD from the global weights.

``sgd`` is the one training routine of the package: devices use it on their own data
and the server uses it on the shared dataset.

Two remedies for non-IID data change the local steps, by adding a term to every
step's gradient (both off by default, and then the steps are exactly plain SGD):

- FedProx (Li et al., MLSys 2020, https://arxiv.org/abs/1812.06127): the proximal
  term ``mu/2 ||w - w_start||^2`` in the loss, so ``mu (w - w_start)`` in the
  gradient, where ``w_start`` are the weights training started from (the global
  model).
- SCAFFOLD (see :mod:`fedlearn_lab.scaffold`): the correction ``c - c_i``, a
  constant for the whole of a device's training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.functional import cross_entropy

from .weights import Updates, Weights, as_stacked, unstack


def batch_orders(
    sizes: Sequence[int], *, epochs: int, generator: torch.Generator
) -> torch.Tensor:
    """One random order per device and epoch, drawn in a single call.

    Returns shape (num_devices, epochs, max(sizes)): row ``[k, e]`` starts with a
    permutation of ``range(sizes[k])`` and is padded with indices >= ``sizes[k]``.
    """
    sizes_t = torch.as_tensor(sizes)
    keys = torch.rand(len(sizes), epochs, int(sizes_t.max()), generator=generator)
    padding = (
        torch.arange(keys.shape[-1]) >= sizes_t[:, None, None]
    )  # (devices, 1, n_max)
    return keys.masked_fill(padding, 2.0).argsort(dim=-1)  # padding sorts last


def minibatches(order: torch.Tensor, size: int, batch_size: int) -> list[torch.Tensor]:
    """Cut a device's (epochs, n_max) order into batches; an epoch may end short."""
    return [
        epoch[start : start + batch_size]
        for epoch in order[:, :size]
        for start in range(0, size, batch_size)
    ]


def sgd(
    model: nn.Module,
    weights: Weights,
    x: torch.Tensor,
    y: torch.Tensor,
    batches: Sequence[torch.Tensor],
    *,
    lr: float,
    mu: float = 0.0,
    correction: Weights | None = None,
) -> tuple[Weights, torch.Tensor]:
    """Plain SGD, one step per index batch; returns new weights and each step's loss.

    ``mu`` (FedProx) adds ``mu (w - weights)`` and ``correction`` (SCAFFOLD's
    ``c - c_i``) adds itself to every step's gradient; the losses are the
    cross-entropy alone.
    """
    check_remedies(weights, mu=mu, corrections=correction, stacked=False)
    params = {k: v.detach().requires_grad_() for k, v in weights.items()}
    remedies = mu != 0 or correction is not None
    losses = []
    for idx in batches:
        loss = cross_entropy(functional_call(model, params, (x[idx],)), y[idx])
        grads = torch.autograd.grad(loss, list(params.values()))
        if remedies:
            grads = _add_remedies(grads, params, weights, mu, correction)
        with torch.no_grad():
            params = {
                k: (p - lr * g).requires_grad_()
                for (k, p), g in zip(params.items(), grads, strict=True)
            }
        losses.append(loss.detach())
    new = {k: p.detach() for k, p in params.items()}
    return new, torch.stack(losses) if losses else torch.zeros(0)


@torch.no_grad()
def _add_remedies(
    grads: Sequence[torch.Tensor],
    params: Weights,
    start: Weights,
    mu: float,
    correction: Weights | None,
) -> list[torch.Tensor]:
    """``grad + mu (w - start) + correction``, parameter by parameter."""
    out = []
    for (k, p), g in zip(params.items(), grads, strict=True):
        if mu != 0:
            g = g + mu * (p - start[k])
        if correction is not None:
            g = g + correction[k]
        out.append(g)
    return out


def check_remedies(
    weights: Weights,
    *,
    mu: float,
    corrections: Weights | None,
    stacked: bool,
    num_devices: int = 1,
) -> None:
    """Refuse a negative or non-finite ``mu``, and corrections that do not match
    ``weights`` (with a leading axis of ``num_devices`` rows if ``stacked``)."""
    if isinstance(mu, bool) or not (isinstance(mu, int | float) and 0 <= mu < math.inf):
        raise ValueError(f"mu must be a finite number >= 0, got {mu!r}")
    if corrections is None:
        return
    name = "corrections" if stacked else "correction"
    lead = (num_devices,) if stacked else ()
    if set(corrections) != set(weights) or any(
        corrections[k].shape != (*lead, *v.shape) for k, v in weights.items()
    ):
        shape = f"({num_devices}, ...) " if stacked else ""
        raise ValueError(
            f"{name} must have the keys and {shape}shapes of the weights, got "
            f"{ {k: tuple(v.shape) for k, v in corrections.items()} }"
        )


def train_devices(
    model: nn.Module,
    weights: Weights,
    x: torch.Tensor,
    y: torch.Tensor,
    device_indices: Sequence[torch.Tensor],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    generator: torch.Generator,
    engine: str = "vectorized",
    stacked: bool = False,
) -> tuple[Updates, torch.Tensor]:
    """Train the sampled devices from ``weights``, as ``engine`` computes it
    (:data:`fedlearn_lab.engines.ENGINES`: the same result either way).

    Returns the devices' new weights, a list (or stacked along a leading device axis
    if ``stacked``), and their mean training loss, shape (devices,).
    """
    from .engines import ENGINES  # engines.py imports this module

    trained, losses = ENGINES[engine].train_devices(
        model, weights, x, y, device_indices,
        epochs=epochs, lr=lr, batch_size=batch_size, generator=generator,
    )  # fmt: skip
    if stacked:
        return as_stacked(trained), losses
    return (unstack(trained) if isinstance(trained, dict) else trained), losses


def train_each(
    model: nn.Module,
    weights: Weights,
    x: torch.Tensor,
    y: torch.Tensor,
    device_indices: Sequence[torch.Tensor],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    generator: torch.Generator,
    mu: float = 0.0,
    corrections: Weights | None = None,
) -> tuple[list[Weights], torch.Tensor]:
    """Train each device in turn from ``weights`` (the reference path).

    ``mu`` and ``corrections`` (row ``k`` for device ``k``): see :func:`sgd`.
    """
    num_devices = len(device_indices)
    check_remedies(
        weights, mu=mu, corrections=corrections, stacked=True, num_devices=num_devices
    )
    sizes = [len(idx) for idx in device_indices]
    orders = batch_orders(sizes, epochs=epochs, generator=generator)
    rows = [None] * num_devices if corrections is None else unstack(corrections)
    results, mean_losses = [], []
    for idx, size, order, correction in zip(
        device_indices, sizes, orders, rows, strict=True
    ):
        batches = minibatches(order, size, batch_size)
        local, losses = sgd(
            model, weights, x[idx], y[idx], batches, lr=lr, mu=mu, correction=correction
        )
        results.append(local)
        mean_losses.append(losses.mean())
    return results, torch.stack(mean_losses)
