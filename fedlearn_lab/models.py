"""Tiny torch models, initialised from an explicit generator."""

from __future__ import annotations

import math

import torch
from torch import nn


class _Flat(nn.Module):
    """Common base: inputs arrive as flat rows and are reshaped when needed."""

    def __init__(self, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)


class LogReg(_Flat):
    """Multinomial logistic regression."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__(input_shape)
        self.fc = nn.Linear(math.prod(input_shape), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class MLP(_Flat):
    """One hidden ReLU layer: ``features -> hidden -> classes``."""

    def __init__(
        self, input_shape: tuple[int, ...], num_classes: int, hidden: int = 64
    ) -> None:
        super().__init__(input_shape)
        self.fc1 = nn.Linear(math.prod(input_shape), hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class CNN(_Flat):
    """Two 3x3 convolutions with 2x2 max-pooling, then a linear layer (small images)."""

    def __init__(
        self, input_shape: tuple[int, ...], num_classes: int, hidden: int = 16
    ) -> None:
        super().__init__(input_shape)
        if len(input_shape) != 3 or min(input_shape[1:]) < 4:
            raise ValueError(
                f"model='cnn' needs images (channels, height, width) of at least 4x4, "
                f"got input_shape {input_shape}"
            )
        channels, height, width = input_shape
        self.conv1 = nn.Conv2d(channels, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, 2 * hidden, 3, padding=1)
        self.fc = nn.Linear(2 * hidden * (height // 4) * (width // 4), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, *self.input_shape)
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


def make_model(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    generator: torch.Generator,
    *,
    hidden: int = 64,
) -> nn.Module:
    """Build ``"logreg"``, ``"mlp"`` or ``"cnn"``; weights drawn from ``generator``."""
    builders = {
        "logreg": lambda: LogReg(input_shape, num_classes),
        "mlp": lambda: MLP(input_shape, num_classes, hidden),
        "cnn": lambda: CNN(input_shape, num_classes, hidden=max(4, hidden // 4)),
    }
    if name not in builders:
        raise ValueError(
            f"model must be one of {', '.join(map(repr, builders))}, got {name!r}"
        )
    with torch.random.fork_rng(devices=[]):  # nn's own init must not move global state
        model = builders[name]()
    _init_(model, generator)
    return model.eval()


@torch.no_grad()
def _init_(model: nn.Module, generator: torch.Generator) -> None:
    # PyTorch's default Linear/Conv init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), but from
    # our generator rather than the global one.
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            bound = 1 / math.sqrt(module.weight[0].numel())
            module.weight.uniform_(-bound, bound, generator=generator)
            module.bias.uniform_(-bound, bound, generator=generator)
