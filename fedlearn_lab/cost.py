"""What a round costs: bytes on the network, FLOPs on devices and server, and time.

The FedDUAP paper measures efficiency as simulated time to reach a target accuracy;
this module is a small, documented model of that time.

Counting rules
--------------
- **Bytes.** Each sampled device downloads the global model once and, unless it is
  lost (faults.py), uploads its trained model once: ``bytes_sent = model_bytes * m``
  for ``m`` sampled devices and ``bytes_received = model_bytes * r`` for the ``r``
  that return (``model_bytes`` is the size of all parameters, float32 here).
  Work the server does on its own data (FedDU, fixed steps, Hybrid-FL's server
  device) moves no bytes. Data sharing sends every device a copy of the shared
  dataset once (features as float32, labels as int64), counted in round 1.
- **FLOPs.** :func:`forward_macs` counts the multiply-accumulates of one forward pass
  layer by layer (``Linear``: in x out; ``Conv2d``: output pixels x out channels x
  in channels x kernel area). Training on one sample costs ``6 * macs`` FLOPs (2
  FLOPs per MAC, the backward pass about twice the forward), evaluating one costs
  ``2 * macs``; biases, activations, pooling and the loss are left out (small for
  these models). A device training E epochs on n samples does ``6 * macs * E * n``.
  The server counts its training samples (steps x batch) and FedDU's evaluation of
  the aggregation model on the shared dataset.
- **Time.** One round is ``download + compute + upload``. A transfer of ``b`` bytes
  to (or from) each of ``k`` devices takes ``max(k b / server_bandwidth, b /
  device_bandwidth)``: the server's link is shared, each device has its own.
  Devices train in parallel at equal speed (the speeds of faults.py's deadline are
  not modelled here), so device compute is the slowest returning device's FLOPs over
  ``device_gflops``; server compute is its FLOPs over ``server_gflops``, after the
  devices (adjustment, FedDU) or alongside them (Hybrid-FL's server device).
  Defaults follow the paper's 50 Mbit/s per device and 100 Mbit/s at the server; the
  compute speeds (1 GFLOP/s for a phone-class device, 100 at the server) are this
  package's assumptions, as the paper measured its training times instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

TRAIN_FLOPS_PER_MAC = 6
EVAL_FLOPS_PER_MAC = 2
LABEL_BYTES = 8  # int64


@torch.no_grad()
def forward_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on one sample (Linear and Conv2d)."""
    macs = 0

    def count(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Linear):
            macs += module.in_features * module.out_features
        else:  # Conv2d: output[0] is (out_channels, height, width)
            kernel = math.prod(module.kernel_size) * module.in_channels // module.groups
            macs += output[0].numel() * kernel

    layers = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    handles = [layer.register_forward_hook(count) for layer in layers]
    try:
        model(torch.zeros(1, math.prod(input_shape)))
    finally:
        for handle in handles:
            handle.remove()
    return macs


def train_flops(macs: int, samples: int) -> int:
    """FLOPs of training on ``samples`` samples (forward and backward)."""
    return TRAIN_FLOPS_PER_MAC * macs * samples


def eval_flops(macs: int, samples: int) -> int:
    """FLOPs of evaluating ``samples`` samples (forward only)."""
    return EVAL_FLOPS_PER_MAC * macs * samples


@dataclass(frozen=True)
class RoundCost:
    """Bytes, FLOPs and simulated seconds of one round (see the module docstring)."""

    bytes_sent: int
    bytes_received: int
    device_flops: int
    server_flops: int
    sim_seconds: float


@dataclass(frozen=True)
class CostModel:
    """The cost of one run's rounds: its links (compute speeds in GFLOP/s, bandwidths
    in Mbit/s) and what stays the same every round (see the module docstring)."""

    device_gflops: float
    server_gflops: float
    device_mbps: float
    server_mbps: float
    model_bytes: int  # one transfer of the model
    flops_per_sample: int  # a device's training FLOPs per sample, all local epochs
    server_alongside: bool = False  # the server computes while the devices do
    # A one-off send before round 1 of this many bytes to each of this many devices
    # (data sharing's copy of the shared dataset).
    broadcast_bytes: int = 0
    broadcast_count: int = 0

    def transfer_seconds(self, num_bytes: int, count: int) -> float:
        """Time to move ``num_bytes`` to or from each of ``count`` devices."""
        bits = 8 * num_bytes
        return max(
            count * bits / (self.server_mbps * 1e6), bits / (self.device_mbps * 1e6)
        )

    def round(
        self, round_idx: int, num_sent: int, sizes: Sequence[int], server_flops: int
    ) -> RoundCost:
        """The cost of round ``round_idx``, which sent the model to ``num_sent``
        devices, of which those that returned trained on ``sizes`` samples each,
        while the server spent ``server_flops``."""
        device_flops = [self.flops_per_sample * n for n in sizes]
        device_s = max(device_flops, default=0) / (self.device_gflops * 1e9)
        server_s = server_flops / (self.server_gflops * 1e9)
        both = max(device_s, server_s) if self.server_alongside else device_s + server_s
        down = [
            (self.broadcast_bytes, self.broadcast_count),
            (self.model_bytes, num_sent),
        ]
        if round_idx != 1:  # the broadcast is a one-off, before round 1
            down[0] = (0, 0)
        up = (self.model_bytes, len(sizes))
        seconds = sum(self.transfer_seconds(*move) for move in [*down, up]) + both
        sent = sum(num_bytes * count for num_bytes, count in down)
        flops = sum(device_flops), int(server_flops)
        return RoundCost(sent, math.prod(up), *flops, seconds)
