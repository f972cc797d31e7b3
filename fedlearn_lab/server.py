"""What the server does with its shared dataset (``FedConfig.shared_use``; the table
is ``fedlearn_lab.state.SHARED_USES``).

- ``"adjust"``: the server adjustment. After aggregation the server trains the
  aggregation model on the shared dataset (:func:`server_adjust`), for as many SGD
  steps as ``server_schedule`` says: ``"fixed"`` takes ``server_steps`` (0 is plain
  FedAvg), ``"feddu"`` takes FedDU's dynamic number (:mod:`fedlearn_lab.feddu`).
- ``"hybrid"``: Hybrid-FL (Yoshida et al. 2019, https://arxiv.org/abs/1905.07210). The
  server trains alongside the devices, as one more participant, from the global model
  with the devices' epochs, batch size and learning rate; its model joins FedAvg
  weighted by the shared dataset's size.
- ``"data_sharing"``: data sharing (Zhao et al. 2018, https://arxiv.org/abs/1806.00582).
  Every device gets a copy of the shared dataset and trains on its own data plus the
  copy; FedAvg weighs it by both.

Every use splits the data the same way for the same seed, so methods differ only in
where the shared dataset goes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .cost import eval_flops, train_flops
from .feddu import MIN_ALPHA, alpha_t, label_divergence, tau_cap, tau_t
from .reference import evaluate, sgd
from .seeding import torch_generator
from .state import ServerState, Setup
from .weights import Weights, add, scale, sub


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


@dataclass(frozen=True)
class ServerStats:
    """What the server's own training did this round, as ``RoundRecord`` fields:
    steps taken and their mean loss, and FedDU's alpha_t, tau_t and the label
    divergence D(P't) of the aggregated devices' data it computed them from."""

    server_steps: int = 0
    server_loss: float = math.nan
    server_alpha: float | None = None
    server_tau: int | None = None
    sampled_label_divergence: float | None = None


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
    sgd: Callable = sgd,
) -> tuple[Weights, ServerStats]:
    """Train the aggregation model ``steps`` SGD steps on the shared dataset.

    Returns the adjusted weights and the steps' stats (``server_steps``, and
    ``server_loss``: the mean loss over the steps). Zero steps, or an empty shared
    dataset, change nothing. ``sgd`` is the training routine (``reference.sgd`` or a
    faster equivalent).
    """
    if steps == 0 or len(y_shared) == 0:
        return weights, ServerStats()
    batches = shared_batches(
        len(y_shared), steps=steps, batch_size=batch_size, generator=generator
    )
    adjusted, losses = sgd(model, weights, x_shared, y_shared, batches, lr=lr)
    return adjusted, ServerStats(steps, losses.mean().item())


@dataclass(frozen=True, eq=False)
class ServerUpdate:
    """The server's new model (``weights``), the FLOPs it spent, and its stats
    (``stats.server_steps > 0``: it trained)."""

    weights: Weights
    flops: int = 0
    stats: ServerStats = ServerStats()


def _adjust(setup: Setup, weights: Weights, steps: int, round_idx: int) -> ServerUpdate:
    """``steps`` SGD steps on the shared dataset, with their FLOPs."""
    cfg, (x, y) = setup.cfg, setup.shared_data
    rng = torch_generator(cfg.seed, "server", round_idx)
    adjusted, stats = server_adjust(
        setup.model, weights, x, y, steps=steps, generator=rng, **setup.server_training
    )
    samples = stats.server_steps * min(len(y), cfg.server_batch_size)
    return ServerUpdate(adjusted, train_flops(setup.macs, samples), stats)


def fixed_schedule(
    setup: Setup, weights: Weights, device_ids: np.ndarray, round_idx: int
) -> ServerUpdate:
    """The server adjustment: ``server_steps`` SGD steps on the shared dataset."""
    return _adjust(setup, weights, setup.cfg.server_steps, round_idx)


def feddu_schedule(
    setup: Setup, weights: Weights, device_ids: np.ndarray, round_idx: int
) -> ServerUpdate:
    """FedDU: alpha_t and tau_t from this round's data (see fedlearn_lab.feddu);
    ``device_ids`` are the devices whose updates were aggregated.

    A round in which no device update was aggregated (faults) gives no devices' data
    to balance: FedDU then does nothing (alpha_t = tau_t = 0).
    """
    cfg, shared = setup.cfg, setup.shared_indices
    if len(device_ids) == 0:
        return ServerUpdate(weights, stats=ServerStats(server_alpha=0.0, server_tau=0))
    counts = setup.label_counts[device_ids].sum(0)  # (num_classes,)
    num_samples = int(counts.sum())  # n't
    divergence = label_divergence(counts / max(num_samples, 1), setup.label_prior)
    shared_accuracy, _ = evaluate(setup.model, weights, *setup.shared_data)
    alpha = alpha_t(
        shared_accuracy,
        num_shared=len(shared),
        num_sampled_samples=num_samples,
        shared_label_divergence=setup.shared_label_divergence,
        sampled_label_divergence=divergence,
        decay=cfg.server_decay,
        round_idx=round_idx,
    )
    cap = tau_cap(
        len(shared),
        local_epochs=cfg.local_epochs,
        server_batch_size=cfg.server_batch_size,
    )
    tau = tau_t(
        alpha,
        num_sampled_samples=num_samples,
        num_sampled=len(device_ids),
        local_epochs=cfg.local_epochs,
        batch_size=cfg.batch_size,
        cap=cap,
    )
    if cfg.feddu_mode == "steps":
        update = _adjust(setup, weights, tau, round_idx)
    elif alpha > MIN_ALPHA:  # "interpolate": keep alpha of a full E-epoch move
        update = _adjust(setup, weights, cap, round_idx)
        moved = add(weights, scale(sub(update.weights, weights), alpha))
        update = dataclasses.replace(update, weights=moved)
    else:
        update = ServerUpdate(weights)
    flops = update.flops + eval_flops(setup.macs, len(shared))  # acc_t
    stats = dataclasses.replace(
        update.stats,
        server_alpha=alpha,
        server_tau=tau,
        sampled_label_divergence=divergence,
    )
    return dataclasses.replace(update, flops=flops, stats=stats)


Schedule = Callable[[Setup, Weights, np.ndarray, int], ServerUpdate]
SCHEDULES: dict[str, Schedule] = {"fixed": fixed_schedule, "feddu": feddu_schedule}


def train_alongside(
    state: ServerState, setup: Setup, round_idx: int
) -> tuple[Weights, int, int]:
    """Hybrid-FL: the server trains on the shared dataset like one more participant;
    returns its weights, its number of samples and the FLOPs it spent."""
    cfg, shared = setup.cfg, setup.shared_indices
    x, y = setup.data.x_train, setup.data.y_train
    rng = torch_generator(cfg.seed, "hybrid", round_idx)
    trained, _ = setup.engine.train_devices(
        setup.model, state.weights, x, y, [shared], generator=rng, **setup.training
    )
    flops = train_flops(setup.macs, cfg.local_epochs * len(shared))
    return {k: v[0] for k, v in trained.items()}, len(shared), flops
