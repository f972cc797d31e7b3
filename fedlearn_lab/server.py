"""Server adjustment: a few SGD steps on the shared dataset after aggregation.

This is what the method adds to FedAvg: the aggregation model is pulled back toward
the global data distribution, which helps most when device data are non-IID.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from . import local
from .weights import Weights


def shared_batches(
    num_shared: int, *, steps: int, batch_size: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """``steps`` batches of ``min(batch_size, num_shared)`` indices, read from a stream
    of fresh permutations of the shared dataset (so every sample is seen equally)."""
    size = min(batch_size, num_shared)
    passes = -(-steps * size // num_shared)  # ceil
    stream = torch.cat(
        [torch.randperm(num_shared, generator=generator) for _ in range(passes)]
    )
    return list(stream[: steps * size].reshape(steps, size))


def server_adjust(
    model: nn.Module,
    weights: Weights,
    x_shared: torch.Tensor,
    y_shared: torch.Tensor,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    generator: torch.Generator,
    sgd: Callable = local.sgd,
) -> tuple[Weights, dict[str, float]]:
    """Train the aggregation model ``steps`` SGD steps on the shared dataset.

    Returns the adjusted weights and stats (``server_steps``, ``server_loss``: the mean
    loss over the steps). Zero steps, or an empty shared dataset, change nothing.
    ``sgd`` is the training routine (``local.sgd`` or a faster equivalent).
    """
    if steps == 0 or len(y_shared) == 0:
        return weights, {"server_steps": 0, "server_loss": float("nan")}
    batches = shared_batches(
        len(y_shared), steps=steps, batch_size=batch_size, generator=generator
    )
    adjusted, losses = sgd(model, weights, x_shared, y_shared, batches, lr=lr)
    return adjusted, {"server_steps": steps, "server_loss": losses.mean().item()}
