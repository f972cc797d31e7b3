"""How the shared dataset is used: FedAvg, fixed steps, FedDU, Hybrid-FL, data sharing.

``FedConfig.shared_use`` says where the shared dataset enters a round:

- ``"adjust"``: the server adjusts the aggregation model on it, for as many steps as
  ``server_schedule`` says: ``"fixed"`` takes ``server_steps`` (0 is plain FedAvg),
  ``"feddu"`` takes FedDU's dynamic number (:mod:`fedlearn_lab.feddu`).
- ``"hybrid"``: Hybrid-FL (Yoshida et al. 2019, https://arxiv.org/abs/1905.07210). The
  server trains like one more device, from the global model with the devices'
  epochs, batch size and learning rate, and its model joins FedAvg weighted by the
  shared dataset's size.
- ``"data_sharing"``: data sharing (Zhao et al. 2018, https://arxiv.org/abs/1806.00582).
  Every device gets a copy of the shared dataset and trains on its own data plus
  the copy; FedAvg weighs it by both.

:data:`METHODS` names the five methods compared in the FedDUAP paper as field
changes, so ``cfg.replace(**fl.METHODS["feddu"])`` turns any config into FedDU.
Every method splits the data the same way for the same seed, so they differ only in
how the shared dataset is used.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from . import local
from .cost import (
    LABEL_BYTES,
    Links,
    RoundCost,
    eval_flops,
    round_cost,
    train_flops,
)
from .engines import ENGINES
from .feddu import MIN_ALPHA, alpha_t, tau_cap, tau_t
from .metrics import evaluate
from .seeding import torch_generator
from .server import server_adjust
from .weights import Weights, add, scale, sub

if TYPE_CHECKING:
    from .config import FedConfig
    from .rounds import ServerState, Setup

METHODS: dict[str, dict[str, Any]] = {
    "fedavg": {"shared_use": "adjust", "server_schedule": "fixed", "server_steps": 0},
    "fixed": {"shared_use": "adjust", "server_schedule": "fixed"},
    "feddu": {"shared_use": "adjust", "server_schedule": "feddu"},
    "hybrid": {"shared_use": "hybrid", "server_schedule": "fixed"},
    "data_sharing": {"shared_use": "data_sharing", "server_schedule": "fixed"},
}


def method_of(cfg: FedConfig) -> str:
    """The :data:`METHODS` name that describes ``cfg``."""
    if cfg.shared_use != "adjust":
        return cfg.shared_use
    if cfg.server_schedule == "feddu":
        return "feddu"
    return "fixed" if cfg.server_steps > 0 else "fedavg"


def inactive_settings(cfg: FedConfig) -> dict[str, str]:
    """The fields that have no effect under ``cfg``, each with the reason why.

    The playground disables these controls and shows the reason as their tooltip.
    """
    why: dict[str, str] = {}
    server = ("server_schedule", "server_steps", "server_lr", "server_batch_size")
    feddu = ("feddu_mode", "server_decay")
    if cfg.shared_use != "adjust":
        reason = f"shared_use={cfg.shared_use!r} has no server adjustment"
        why.update(dict.fromkeys(server + feddu, reason))
    elif cfg.server_schedule == "feddu":
        why["server_steps"] = "FedDU sets the server steps each round"
    else:
        why.update(dict.fromkeys(feddu, "only FedDU (server_schedule='feddu') uses it"))
        if cfg.server_steps == 0:
            reason = "server_steps=0: no server adjustment (plain FedAvg)"
            why.update(dict.fromkeys(server[2:], reason))
    if cfg.shared_fraction == 0:
        reason = "shared_fraction=0: there is no shared dataset"
        why.update(dict.fromkeys(("shared_use", "shared_classes"), reason))
    if cfg.server_momentum == "none":
        why["momentum_beta"] = "server_momentum='none'"
    if cfg.malicious_fraction == 0:
        reason = "malicious_fraction=0: no device attacks"
        why.update(dict.fromkeys(("attack", "attack_strength"), reason))
    if cfg.partition in ("iid", "natural"):
        why["skew"] = f"partition={cfg.partition!r} has no label skew to set"
    return why


def device_data(setup: Setup, sampled_ids: Any) -> list[torch.Tensor]:
    """Each sampled device's training indices (plus the shared copy if data sharing)."""
    own = [setup.device_indices[k] for k in sampled_ids]
    if setup.cfg.shared_use != "data_sharing" or len(setup.shared_indices) == 0:
        return own
    return [torch.cat([idx, setup.shared_indices]) for idx in own]


@dataclass(frozen=True)
class SampledInfo:
    """What the server knows of this round's sampled devices."""

    round_idx: int
    num_sampled: int  # m: devices whose updates were aggregated
    num_samples: int  # n't: their own samples
    divergence: float  # D(P't); NaN when m = 0


def server_device(
    state: ServerState, setup: Setup, round_idx: int
) -> tuple[list[tuple[Weights, int]], int]:
    """Hybrid-FL's server device: its (weights, num_samples) pair and FLOPs, if any."""
    cfg, data, shared = setup.cfg, setup.data, setup.shared_indices
    if cfg.shared_use != "hybrid" or len(shared) == 0:
        return [], 0
    (trained,), _ = local.train_devices(
        setup.model,
        state.weights,
        data.x_train,
        data.y_train,
        [shared],
        epochs=cfg.local_epochs,
        lr=cfg.local_lr,
        batch_size=cfg.batch_size,
        generator=torch_generator(cfg.seed, "hybrid", round_idx),
        engine=cfg.engine,
    )
    flops = train_flops(setup.macs, cfg.local_epochs * len(shared))
    return [(trained, len(shared))], flops


@dataclass(frozen=True, eq=False)
class ServerUpdate:
    """What the server's own training did this round (``weights`` is the new model)."""

    weights: Weights
    steps: int = 0
    loss: float = math.nan
    flops: int = 0
    alpha: float | None = None
    tau: int | None = None


def _adjust(setup: Setup, weights: Weights, steps: int, round_idx: int) -> ServerUpdate:
    """``steps`` SGD steps on the shared dataset, with their FLOPs."""
    cfg = setup.cfg
    x_shared, y_shared = setup.shared_data
    adjusted, stats = server_adjust(
        setup.model,
        weights,
        x_shared,
        y_shared,
        steps=steps,
        lr=cfg.server_lr,
        batch_size=cfg.server_batch_size,
        generator=torch_generator(cfg.seed, "server", round_idx),
        sgd=ENGINES[cfg.engine].sgd,
    )
    done = int(stats["server_steps"])
    samples = done * min(cfg.server_batch_size, len(y_shared))
    return ServerUpdate(
        adjusted, done, stats["server_loss"], train_flops(setup.macs, samples)
    )


def fixed_schedule(setup: Setup, weights: Weights, info: SampledInfo) -> ServerUpdate:
    """The seed method: ``server_steps`` SGD steps on the shared dataset every round."""
    return _adjust(setup, weights, setup.cfg.server_steps, info.round_idx)


def feddu_schedule(setup: Setup, weights: Weights, info: SampledInfo) -> ServerUpdate:
    """FedDU: alpha_t and tau_t from this round's data (see fedlearn_lab.feddu).

    A round in which no device update was aggregated (faults) gives no devices' data
    to balance: FedDU then does nothing (alpha_t = tau_t = 0).
    """
    cfg, shared = setup.cfg, setup.shared_indices
    if info.num_sampled == 0:
        return ServerUpdate(weights, alpha=0.0, tau=0)
    shared_accuracy, _ = evaluate(setup.model, weights, *setup.shared_data)
    alpha = alpha_t(
        shared_accuracy,
        num_shared=len(shared),
        num_sampled_samples=info.num_samples,
        shared_divergence=setup.shared_divergence,
        sampled_divergence=info.divergence,
        decay=cfg.server_decay,
        round_idx=info.round_idx,
    )
    cap = tau_cap(
        len(shared),
        local_epochs=cfg.local_epochs,
        server_batch_size=cfg.server_batch_size,
    )
    tau = tau_t(
        alpha,
        num_sampled_samples=info.num_samples,
        num_sampled=info.num_sampled,
        local_epochs=cfg.local_epochs,
        batch_size=cfg.batch_size,
        cap=cap,
    )
    if cfg.feddu_mode == "steps":
        update = _adjust(setup, weights, tau, info.round_idx)
    elif alpha > MIN_ALPHA:  # "interpolate": keep alpha of a full E-epoch move
        update = _adjust(setup, weights, cap, info.round_idx)
        moved = add(weights, scale(sub(update.weights, weights), alpha))
        update = dataclasses.replace(update, weights=moved)
    else:
        update = ServerUpdate(weights)
    flops = update.flops + eval_flops(setup.macs, len(shared))  # acc_t
    return dataclasses.replace(update, flops=flops, alpha=alpha, tau=tau)


SCHEDULES: dict[str, Callable[[Setup, Weights, SampledInfo], ServerUpdate]] = {
    "fixed": fixed_schedule,
    "feddu": feddu_schedule,
}


def server_update(setup: Setup, weights: Weights, info: SampledInfo) -> ServerUpdate:
    """The server adjustment that ``cfg.server_schedule`` picks (none unless
    ``shared_use="adjust"``)."""
    if setup.cfg.shared_use != "adjust":
        return ServerUpdate(weights)
    return SCHEDULES[setup.cfg.server_schedule](setup, weights, info)


def method_cost(
    setup: Setup, num_sent: int, sizes: list[int], server_flops: int, round_idx: int
) -> RoundCost:
    """The cost of a round that sent the model to ``num_sent`` devices, of which those
    that returned trained on ``sizes`` samples each (see cost.py)."""
    cfg, x_train = setup.cfg, setup.data.x_train
    links = Links(
        cfg.device_gflops, cfg.server_gflops, cfg.device_mbps, cfg.server_mbps
    )
    sharing = cfg.shared_use == "data_sharing" and round_idx == 1
    sample_bytes = x_train.shape[1] * x_train.element_size() + LABEL_BYTES
    return round_cost(
        links,
        model_bytes=setup.model_bytes,
        num_sent=num_sent,
        device_flops=[train_flops(setup.macs, cfg.local_epochs * n) for n in sizes],
        server_flops=server_flops,
        server_alongside=cfg.shared_use == "hybrid",
        broadcast_bytes=len(setup.shared_indices) * sample_bytes if sharing else 0,
        broadcast_count=cfg.num_devices if sharing else 0,
    )
