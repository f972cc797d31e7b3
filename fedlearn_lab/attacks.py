"""Malicious devices for teaching: who they are and what they send.

A fixed set of ``round(malicious_fraction * num_devices)`` devices (half up), chosen by
the seed, attacks in every round it is sampled. With ``s = attack_strength`` and the
honest delta ``d = local - global``:

- ``"sign_flip"`` sends ``global - s * d``: it pushes the model the other way;
- ``"scale"`` sends ``global + s * d``: an honest direction, boosted to dominate;
- ``"noise"`` sends ``global + e`` with Gaussian ``e`` of norm ``s * |d|``;
- ``"label_flip"`` trains honestly on labels ``c -> num_classes - 1 - c``.

With FedAvg, sign flipping by ``s`` from a fraction ``p`` of the samples leaves a
mean delta of about ``(1 - p - s p) d``, so ``s = 4`` stalls training at ``p = 0.2``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .config import ATTACKS
from .weights import Weights


def num_malicious(num_devices: int, fraction: float) -> int:
    """``fraction * num_devices`` rounded half up (after rounding to 9 decimals)."""
    return math.floor(round(fraction * num_devices, 9) + 0.5)


def malicious_devices(
    num_devices: int, fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """The sorted ids of the malicious devices."""
    count = num_malicious(num_devices, fraction)
    return np.sort(rng.choice(num_devices, size=count, replace=False))


def flip_labels(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Map class ``c`` to ``num_classes - 1 - c``."""
    return num_classes - 1 - y


def corrupt(
    update: Weights,
    reference: Weights,
    *,
    attack: str,
    strength: float,
    generator: torch.Generator,
) -> Weights:
    """What a malicious device sends instead of ``update``, the weights it trained from
    ``reference`` (``"label_flip"`` acts on the data, so it returns ``update``)."""
    if attack == "label_flip":
        return update
    delta = {k: update[k] - reference[k] for k in reference}
    if attack == "sign_flip":
        delta = {k: -strength * d for k, d in delta.items()}
    elif attack == "scale":
        delta = {k: strength * d for k, d in delta.items()}
    elif attack == "noise":
        noise = {k: torch.randn(d.shape, generator=generator) for k, d in delta.items()}
        size = torch.stack([d.square().sum() for d in delta.values()]).sum().sqrt()
        norm = torch.stack([e.square().sum() for e in noise.values()]).sum().sqrt()
        delta = {k: e * (strength * size / norm) for k, e in noise.items()}
    else:
        raise ValueError(f"attack must be one of {ATTACKS}, got {attack!r}")
    return {k: reference[k] + d for k, d in delta.items()}
