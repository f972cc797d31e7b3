"""Accuracy and loss of a model's weights on a dataset."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.functional import cross_entropy

from .weights import Weights


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
    model: nn.Module, weights: list[Weights], x: torch.Tensor, y: torch.Tensor
) -> list[tuple[float, float]]:
    """:func:`evaluate` for each of ``weights`` in turn."""
    return [evaluate(model, w, x, y) for w in weights]


@torch.no_grad()
def per_device_accuracy(
    model: nn.Module,
    weights: Weights,
    x: torch.Tensor,
    y: torch.Tensor,
    device_indices: list[torch.Tensor],
) -> list[float]:
    """Accuracy of ``weights`` on each device's own data (one pass over all of it)."""
    correct = functional_call(model, weights, (x,)).argmax(dim=1) == y
    return [correct[idx].double().mean().item() for idx in device_indices]
