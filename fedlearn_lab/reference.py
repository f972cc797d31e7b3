"""The reference engine: one device, one SGD step, one model at a time.

``sgd`` is the one training routine of the package: devices use it on their own data
and the server uses it on the shared dataset. The vectorized engine
(:mod:`fedlearn_lab.vectorized`) computes the same numbers faster; tests hold the two
together.

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

from .weights import Weights, stack


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
    if remedies := mu != 0 or correction is not None:
        check_remedies(weights, mu=mu, corrections=correction, stacked=False)
    params = {k: v.detach().requires_grad_() for k, v in weights.items()}
    losses = []
    for idx in batches:
        loss = cross_entropy(functional_call(model, params, (x[idx],)), y[idx])
        grads = torch.autograd.grad(loss, list(params.values()))
        if remedies:
            grads = _add_remedies(grads, params, weights, mu, correction)
        with torch.no_grad():
            stepped = [p - lr * g for p, g in zip(params.values(), grads, strict=True)]
        params = {k: p.requires_grad_() for k, p in zip(params, stepped, strict=True)}
        losses.append(loss.detach())
    new = {k: p.detach() for k, p in params.items()}
    return new, torch.stack(losses) if losses else torch.zeros(0)


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
) -> tuple[Weights, torch.Tensor]:
    """Train each device in turn from ``weights``.

    Returns the devices' new weights stacked along a leading device axis, and their
    mean training loss, shape (devices,). ``mu`` and ``corrections`` (row ``k`` for
    device ``k``): see :func:`sgd`.
    """
    sizes = [len(idx) for idx in device_indices]
    orders = batch_orders(sizes, epochs=epochs, generator=generator)
    results, mean_losses = [], []
    for k, (idx, size, order) in enumerate(
        zip(device_indices, sizes, orders, strict=True)
    ):
        batches = minibatches(order, size, batch_size)
        remedies = {"mu": mu, "correction": _row(corrections, k)}
        local, losses = sgd(model, weights, x[idx], y[idx], batches, lr=lr, **remedies)
        results.append(local)
        mean_losses.append(losses.mean())
    return stack(results), torch.stack(mean_losses)


def _row(stacked: Weights | None, k: int) -> Weights | None:
    """Row ``k`` of stacked weights (None stays None)."""
    return None if stacked is None else {name: v[k] for name, v in stacked.items()}


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


@torch.no_grad()
def evaluate(
    model: nn.Module, weights: Weights, x: torch.Tensor, y: torch.Tensor
) -> tuple[float, float]:
    """Return ``(accuracy, mean cross-entropy loss)`` of ``weights`` on ``(x, y)``."""
    if len(y) == 0:
        return float("nan"), float("nan")
    logits = functional_call(model, weights, (x,))
    accuracy = (logits.argmax(dim=1) == y).double().mean().item()
    return accuracy, cross_entropy(logits, y).item()


def evaluate_each(
    model: nn.Module, weights: Sequence[Weights], x: torch.Tensor, y: torch.Tensor
) -> list[tuple[float, float]]:
    """:func:`evaluate` for each of ``weights`` in turn."""
    return [evaluate(model, w, x, y) for w in weights]


@torch.no_grad()
def per_device_accuracy(
    model: nn.Module,
    weights: Weights,
    x: torch.Tensor,
    y: torch.Tensor,
    device_indices: Sequence[torch.Tensor],
) -> list[float]:
    """Accuracy of ``weights`` on each device's own data (one pass over all of it)."""
    correct = functional_call(model, weights, (x,)).argmax(dim=1) == y
    return [correct[idx].double().mean().item() for idx in device_indices]
