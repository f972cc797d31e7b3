"""The reference engine: one device, one SGD step, one model at a time.

``sgd`` is the one training routine of the package: devices use it on their own data
and the server uses it on the shared dataset. The vectorized engine
(:mod:`fedlearn_lab.vectorized`) computes the same numbers faster; tests hold the two
together.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.functional import cross_entropy

from .weights import Weights


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
) -> tuple[Weights, torch.Tensor]:
    """Plain SGD, one step per index batch; returns new weights and each step's loss."""
    params = {k: v.detach().requires_grad_() for k, v in weights.items()}
    losses = []
    for idx in batches:
        loss = cross_entropy(functional_call(model, params, (x[idx],)), y[idx])
        grads = torch.autograd.grad(loss, list(params.values()))
        with torch.no_grad():
            params = {
                k: (p - lr * g).requires_grad_()
                for (k, p), g in zip(params.items(), grads, strict=True)
            }
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
) -> tuple[Weights, torch.Tensor]:
    """Train each device in turn from ``weights``.

    Returns the devices' new weights stacked along a leading device axis, and their
    mean training loss, shape (devices,).
    """
    sizes = [len(idx) for idx in device_indices]
    orders = batch_orders(sizes, epochs=epochs, generator=generator)
    results, mean_losses = [], []
    for idx, size, order in zip(device_indices, sizes, orders, strict=True):
        batches = minibatches(order, size, batch_size)
        local, losses = sgd(model, weights, x[idx], y[idx], batches, lr=lr)
        results.append(local)
        mean_losses.append(losses.mean())
    stacked = {k: torch.stack([w[k] for w in results]) for k in weights}
    return stacked, torch.stack(mean_losses)


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
