"""One round, as functions of explicit state: plan, devices' side, server's side.

=============  ==========================================  ====================
step           what happens                                function
=============  ==========================================  ====================
sample         the server draws ``participation`` of the   :func:`plan_round`
               devices; faults and attackers are decided
send + train   each returned device trains from the        :func:`train_returned`
               global weights (an attacker then corrupts   (one device:
               what it sends)                              :func:`train_device`)
screen         NaN/Inf and outsized updates are left out   :func:`finish_round`
aggregate      FedAvg (or a robust rule) of the rest
adjust         SGD steps on the shared dataset
evaluate       test accuracy before and after adjusting
=============  ==========================================  ====================

``run_round`` chains them. The in-process loop and the Flower bridge
(:mod:`fedlearn_lab.flower`) both call :func:`plan_round`, :func:`train_device` (or
its all-at-once form) and :func:`finish_round`: one round, one path.

Inside a round, the devices' returned weights (their *updates*, see
:mod:`fedlearn_lab.weights`) are stacked along a leading device axis, row ``i``
from device ``plan.returned[i]``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from . import attacks, faults
from .aggregation import AGGREGATORS, Stacked, screen_updates
from .config import FedConfig
from .history import History, RoundRecord
from .momentum import momentum_step
from .reference import batch_orders, minibatches, sgd
from .scaffold import corrections, update_controls
from .seeding import numpy_rng, torch_generator
from .server import SCHEDULES, ServerUpdate, train_alongside
from .server_opt import server_opt_step
from .state import ServerState, Setup
from .weights import Weights


def num_sampled(num_devices: int, participation: float) -> int:
    """Devices per round: ``participation * num_devices`` rounded half up, at least 1.

    The product is first rounded to 9 decimals so that float noise such as
    ``0.15 * 10 = 1.4999999999999998`` rounds as a person would (to 2).
    """
    return max(1, math.floor(round(participation * num_devices, 9) + 0.5))


def sample_devices(
    num_devices: int, participation: float, rng: np.random.Generator
) -> np.ndarray:
    """Draw :func:`num_sampled` distinct device ids uniformly, returned sorted."""
    if not 0 < participation <= 1:
        raise ValueError(f"participation must be in (0, 1], got {participation!r}")
    count = num_sampled(num_devices, participation)
    return np.sort(rng.choice(num_devices, size=count, replace=False))


class DivergedError(RuntimeError):
    """The global model's loss became NaN or Inf; earlier rounds stay in the history
    (``Federation.history``, and ``.history`` on the error raised by ``step``)."""

    history: History | None = None


@dataclass(frozen=True)
class RoundPlan:
    """Who takes part in round ``round_idx`` (a pure function of config, seed, round).

    ``sampled`` devices get the global model; ``returned`` send their weights back in
    time; ``lost`` names the others and why (``"dropout"``, ``"deadline"``);
    ``malicious`` are the returned devices that attack.
    """

    round_idx: int
    sampled: np.ndarray
    returned: np.ndarray
    lost: dict[int, str]
    malicious: np.ndarray


def plan_round(setup: Setup, round_idx: int) -> RoundPlan:
    """The devices of round ``round_idx`` (1-based) and what becomes of them."""
    cfg = setup.cfg
    rng = numpy_rng(cfg.seed, "sample", round_idx)
    sampled = sample_devices(cfg.num_devices, cfg.participation, rng)
    returned, lost = sampled, {}
    if cfg.dropout > 0 or cfg.deadline is not None:
        returned, lost = faults.arrivals(sampled, setup.device_sizes, cfg, round_idx)
    attack = cfg.malicious_fraction > 0
    malicious = (
        returned[np.isin(returned, _attackers(setup))] if attack else returned[:0]
    )
    return RoundPlan(round_idx, sampled, returned, lost, malicious)


def train_returned(
    setup: Setup, state: ServerState, plan: RoundPlan
) -> tuple[Weights, torch.Tensor]:
    """The devices' side, all at once: every returned device trains from the global
    weights (SCAFFOLD's correction ``c - c_i`` in every step) and an attacker
    corrupts its own. Returns the weights stacked in ``plan.returned`` order and
    each device's mean training loss."""
    cfg, data, weights = setup.cfg, setup.data, state.weights
    if len(plan.returned) == 0:
        return {k: v.new_empty(0, *v.shape) for k, v in weights.items()}, torch.zeros(0)
    flips = cfg.attack == "label_flip" and len(plan.malicious) > 0
    y = _labels(setup, plan.malicious) if flips else data.y_train
    indices = [setup.train_indices[k] for k in plan.returned]
    rng = torch_generator(cfg.seed, "local", plan.round_idx)
    kwargs = {"generator": rng, **setup.training}
    if cfg.scaffold:  # each device's correction c - c_i
        kwargs["corrections"] = corrections(*state.controls, plan.returned)
    trained, losses = setup.engine.train_devices(
        setup.model, weights, data.x_train, y, indices, **kwargs
    )
    if len(plan.malicious) and cfg.attack != "label_flip":
        trained = _attack_rows(setup, weights, trained, plan)
    return trained, losses


def train_device(
    setup: Setup,
    weights: Weights,
    plan: RoundPlan,
    device_id: int,
    correction: Weights | None = None,
) -> tuple[Weights, float]:
    """The devices' side for one returned device alone (a Flower ClientApp): the
    minibatches :func:`train_returned` gives it (with FedProx's ``mu`` and
    SCAFFOLD's ``correction`` c - c_i, if any), then its attack if it is malicious.
    Returns the weights it sends and its mean training loss."""
    cfg, data = setup.cfg, setup.data
    sizes = [setup.train_sizes[k] for k in plan.returned]
    orders = batch_orders(
        sizes,
        epochs=cfg.local_epochs,
        generator=torch_generator(cfg.seed, "local", plan.round_idx),
    )
    row = list(plan.returned).index(device_id)
    malicious = device_id in plan.malicious
    flips = malicious and cfg.attack == "label_flip"
    y = _labels(setup, [device_id]) if flips else data.y_train
    idx = setup.train_indices[device_id]
    batches = minibatches(orders[row], sizes[row], cfg.batch_size)
    new, losses = sgd(
        setup.model,
        weights,
        data.x_train[idx],
        y[idx],
        batches,
        lr=cfg.local_lr,
        mu=cfg.proximal_mu,
        correction=correction,
    )
    if malicious and cfg.attack != "label_flip":
        new = _attack(setup, weights, new, plan, device_id)
    return new, losses.mean().item()


def _attackers(setup: Setup) -> np.ndarray:
    """The malicious devices (the same every round)."""
    cfg = setup.cfg
    rng = numpy_rng(cfg.seed, "malicious")
    return attacks.malicious_devices(cfg.num_devices, cfg.malicious_fraction, rng)


def _labels(setup: Setup, attackers: object) -> torch.Tensor:
    """The training labels with each attacker's own labels flipped (partitions are
    disjoint, so every device still sees only its own flips)."""
    data = setup.data
    y = data.y_train.clone()
    for k in attackers:
        idx = setup.device_indices[k]
        y[idx] = attacks.flip_labels(y[idx], data.num_classes)
    return y


def _attack_rows(
    setup: Setup, weights: Weights, trained: Weights, plan: RoundPlan
) -> Weights:
    """``trained`` (stacked in ``plan.returned`` order) with the malicious devices'
    rows replaced by what they send."""
    trained = {k: v.clone() for k, v in trained.items()}
    for row in np.flatnonzero(np.isin(plan.returned, plan.malicious)):
        own = {k: v[row] for k, v in trained.items()}
        sent = _attack(setup, weights, own, plan, int(plan.returned[row]))
        for k, v in trained.items():
            v[row] = sent[k]
    return trained


def _attack(
    setup: Setup, weights: Weights, own: Weights, plan: RoundPlan, device_id: int
) -> Weights:
    """What a malicious device sends instead of ``own`` (its own random stream)."""
    cfg = setup.cfg
    generator = torch_generator(cfg.seed, "attack", plan.round_idx, device_id)
    return attacks.corrupt(
        own,
        weights,
        attack=cfg.attack,
        strength=cfg.attack_strength,
        generator=generator,
    )


def run_round(state: ServerState, setup: Setup) -> tuple[ServerState, RoundRecord]:
    """One round from ``state``; returns the next state and the round's record."""
    started = time.perf_counter()
    plan = plan_round(setup, state.round_idx + 1)
    updates, losses = train_returned(setup, state, plan)
    state, record = finish_round(state, setup, plan, updates, losses)
    return state, dataclasses.replace(record, seconds=time.perf_counter() - started)


def finish_round(
    state: ServerState, setup: Setup, plan: RoundPlan, updates: Weights, losses: Tensor
) -> tuple[ServerState, RoundRecord]:
    """The server's side of a round: screen the returned ``updates`` (stacked in
    ``plan.returned`` order, with the devices' mean training ``losses``), aggregate
    them, adjust on the shared dataset, evaluate, and record (its ``seconds`` are
    the caller's to set). If no update survives, the aggregation model is the
    previous global model; the server adjustment still runs."""
    cfg, round_idx, use = setup.cfg, plan.round_idx, setup.use
    reasons = screen_updates(updates, state.weights, max_norm_ratio=cfg.max_norm_ratio)
    kept = [i for i, reason in enumerate(reasons) if reason is None]
    sizes = [setup.train_sizes[k] for k in plan.returned]
    if len(kept) < len(sizes):  # leave the rejected rows out
        updates = {k: v[kept] for k, v in updates.items()}
    stacked, server_flops = Stacked(updates, [sizes[i] for i in kept]), 0
    if use.trains_alongside and len(setup.shared_indices):
        stacked, server_flops = _with_server(state, setup, stacked, round_idx)
    aggregated, momentum, moments = state.weights, state.momentum, state.moments
    if stacked.counts:
        aggregated = AGGREGATORS[cfg.aggregator](stacked)
    if cfg.server_momentum != "none" or cfg.server_opt != "none":
        aggregated, momentum, moments = _server_optimizer(state, setup, aggregated)
    update = ServerUpdate(aggregated)
    if use.adjusts:
        schedule = SCHEDULES[cfg.server_schedule]
        update = schedule(setup, aggregated, plan.returned[kept], round_idx)
    trained = update.stats.server_steps > 0
    models = [aggregated, update.weights] if trained else [aggregated]
    if trained and cfg.server_momentum == "feddum":  # its second step
        models[1], momentum = _momentum(cfg, aggregated, update.weights, momentum)
    scores = setup.engine.evaluate(setup.model, models, *setup.test_data)
    (agg_acc, agg_loss), (acc, loss) = scores[0], scores[-1]
    if not math.isfinite(loss):
        raise _diverged(round_idx, cfg, loss)
    rejected = {int(plan.returned[i]): r for i, r in enumerate(reasons) if r}
    server_flops += update.flops
    cost = setup.cost_model.round(round_idx, len(plan.sampled), sizes, server_flops)
    record = RoundRecord(
        round=round_idx,
        devices=tuple(int(k) for k in plan.sampled),
        num_samples=sum(sizes[i] for i in kept),
        train_loss=losses[kept].mean().item() if kept else math.nan,
        aggregate_accuracy=agg_acc,
        aggregate_loss=agg_loss,
        accuracy=acc,
        loss=loss,
        shared_label_divergence=setup.shared_label_divergence,
        **dataclasses.asdict(update.stats),
        **dataclasses.asdict(cost),
        returned=tuple(int(k) for k in plan.returned),
        rejected=tuple(rejected),
        failures=tuple(sorted({**plan.lost, **rejected}.items())),
        kept_previous=not stacked.counts,
    )
    controls = _controls(state, setup, plan, updates, kept) if cfg.scaffold else None
    return ServerState(round_idx, models[-1], momentum, moments, controls), record


def _with_server(
    state: ServerState, setup: Setup, stacked: Stacked, round_idx: int
) -> tuple[Stacked, int]:
    """Hybrid-FL: the devices' kept weights and the server's own, with its FLOPs."""
    weights, num_shared, flops = train_alongside(state, setup, round_idx)
    rows = {k: torch.cat([v, weights[k][None]]) for k, v in stacked.weights.items()}
    return Stacked(rows, [*stacked.counts, num_shared]), flops


def _server_optimizer(
    state: ServerState, setup: Setup, aggregated: Weights
) -> tuple[Weights, Weights | None, tuple[Weights, Weights] | None]:
    """The server's optimiser on the move to ``aggregated``: FedAvgM's or FedDUM's
    momentum, or FedAdam, FedYogi or FedAdagrad; returns the new aggregation model,
    the momentum and the moments."""
    cfg = setup.cfg
    if cfg.server_opt == "none":
        new, momentum = _momentum(cfg, state.weights, aggregated, state.momentum)
        return new, momentum, state.moments
    new, moments = server_opt_step(
        cfg.server_opt,
        state.weights,
        aggregated,
        state.moments,
        lr=cfg.server_opt_lr,
        beta1=cfg.server_opt_beta1,
        beta2=cfg.server_opt_beta2,
        tau=cfg.server_opt_tau,
        round_idx=state.round_idx + 1,
    )
    return new, state.momentum, moments


def _controls(
    state: ServerState, setup: Setup, plan: RoundPlan, updates: Weights, kept: list
) -> tuple[Weights, Weights]:
    """SCAFFOLD's controls after the round (option II): each aggregated device's
    c_i+ from its weights, then the server's c. The server computes c_i+ from what it
    has (x, y_i, c, c_i and the device's number of steps K); a real device would
    compute it and send it with its weights (cost.py counts that upload)."""
    cfg, (c, c_all), ids = setup.cfg, state.controls, plan.returned[kept]
    if len(ids) == 0:
        return c, c_all
    sizes = torch.tensor([setup.train_sizes[k] for k in ids])
    steps = (cfg.local_epochs * -(-sizes // cfg.batch_size)).tolist()  # K per device
    return update_controls(
        (c, c_all), state.weights, updates, ids, num_steps=steps, lr=cfg.local_lr
    )


def _momentum(
    cfg: FedConfig, old: Weights, new: Weights, momentum: Weights | None
) -> tuple[Weights, Weights | None]:
    return momentum_step(
        cfg.server_momentum, old, new, momentum, beta=cfg.momentum_beta
    )


def _kept(round_idx: int) -> str:
    if round_idx > 1:
        return f"The history keeps rounds 1..{round_idx - 1}."
    return "No round finished."


def _diverged(round_idx: int, cfg: FedConfig, loss: float) -> DivergedError:
    """The error for a global model whose test loss is ``loss`` (NaN or Inf)."""
    attackers = (
        f" or the malicious devices' {cfg.attack} updates got through (try "
        f"aggregator='median' or a lower max_norm_ratio)"
        if cfg.malicious_fraction > 0
        else ""
    )
    return DivergedError(
        f"round {round_idx} diverged (loss={loss}): the learning rate is probably too "
        f"large (try a smaller local_lr, now {cfg.local_lr:g}, or server_lr, now "
        f"{cfg.server_lr:g}){attackers}. {_kept(round_idx)}"
    )
