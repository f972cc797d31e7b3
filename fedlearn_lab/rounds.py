"""The federated loop: sample -> send -> train -> aggregate -> adjust -> evaluate.

``run_round`` is one round as a function of explicit state; ``Federation`` keeps that
state, the history, and the end condition; ``run`` is the one-call version.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import attacks, faults, local
from .aggregation import AGGREGATORS, Stacked
from .config import FedConfig
from .cost import forward_macs
from .data import Dataset, check_dataset, load_digits
from .engines import ENGINES
from .feddu import js_divergence, label_distribution
from .history import History, RoundRecord
from .methods import SampledInfo, device_data, method_cost, server_device, server_update
from .metrics import per_device_accuracy
from .models import make_model
from .momentum import momentum_step
from .partition import label_counts, partition_devices, shared_split
from .sampling import sample_devices
from .seeding import numpy_rng, torch_generator
from .weights import Updates, Weights, clone, stack, take, unstack, weights_bytes


class DivergedError(RuntimeError):
    """The global model's loss became NaN or Inf; earlier rounds stay in the history
    (``Federation.history``, and ``.history`` on the error raised by ``step``)."""

    history: History | None = None


@dataclass(frozen=True)
class ServerState:
    """What the server carries from round to round (``momentum``: see momentum.py)."""

    round_idx: int
    weights: Weights
    momentum: Weights | None = None


@dataclass(frozen=True, eq=False)
class Setup:
    """Everything a round reads but never changes: config, data, model, partitions."""

    cfg: FedConfig
    data: Dataset
    model: nn.Module
    device_indices: list[torch.Tensor]
    shared_indices: torch.Tensor

    @cached_property
    def label_prior(self) -> np.ndarray:
        """P: the label distribution of all device data together."""
        counts = self.label_counts.sum(0)
        return counts / counts.sum()

    @cached_property
    def shared_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The shared dataset's features and labels, indexed once."""
        shared = self.shared_indices
        return self.data.x_train[shared], self.data.y_train[shared]

    @cached_property
    def shared_divergence(self) -> float | None:
        """D(P0): how far the shared dataset's labels are from P (None if empty)."""
        labels = self.shared_data[1].numpy()
        if len(labels) == 0:
            return None
        own = label_distribution(labels, self.data.num_classes)
        return js_divergence(own, self.label_prior)

    @cached_property
    def device_sizes(self) -> list[int]:
        """Each device's number of training samples."""
        return [len(idx) for idx in self.device_indices]

    @cached_property
    def label_counts(self) -> np.ndarray:
        """Samples of each class on each device, shape (num_devices, num_classes)."""
        parts = [idx.numpy() for idx in self.device_indices]
        return label_counts(self.data.y_train.numpy(), parts, self.data.num_classes)

    @cached_property
    def model_bytes(self) -> int:
        """Bytes of the model's weights (what one transfer of the model sends)."""
        return weights_bytes(dict(self.model.state_dict()))

    @cached_property
    def macs(self) -> int:
        """Multiply-accumulates of one forward pass on one sample (see cost.py)."""
        return forward_macs(self.model, self.data.input_shape)


def make_setup(cfg: FedConfig, data: Dataset) -> Setup:
    """Split the data into the shared dataset and the devices, and build the model."""
    labels = data.y_train.numpy()
    shared, rest = shared_split(
        labels,
        cfg.shared_fraction,
        numpy_rng(cfg.seed, "shared"),
        num_classes=data.num_classes,
        classes=cfg.shared_classes,
    )
    if cfg.shared_fraction > 0 and len(shared) == 0:
        raise ValueError(
            f"shared_fraction={cfg.shared_fraction} selects no sample of the "
            f"{len(labels)} training samples; raise it or set it to 0"
        )
    natural = None
    if cfg.partition == "natural" and data.natural_partition is not None:
        in_rest = np.zeros(len(labels), dtype=bool)
        in_rest[rest] = True
        # Positions in `rest` of each device's natural samples that the server left it.
        natural = [np.searchsorted(rest, p[in_rest[p]]) for p in data.natural_partition]
        if any(len(p) == 0 for p in natural):
            raise ValueError(
                "shared_fraction leaves a device of the natural split empty"
            )
    parts = partition_devices(
        labels[rest], cfg, numpy_rng(cfg.seed, "partition"), natural
    )
    model = make_model(
        cfg.model,
        data.input_shape,
        data.num_classes,
        torch_generator(cfg.seed, "init"),
        hidden=cfg.hidden,
    )
    return Setup(
        cfg=cfg,
        data=data,
        model=model,
        device_indices=[torch.from_numpy(rest[p]) for p in parts],
        shared_indices=torch.from_numpy(shared),
    )


def run_round(state: ServerState, setup: Setup) -> tuple[ServerState, RoundRecord]:
    """One round from ``state``; returns the next state and the round's record.

    The devices' side (sampling, faults, local training, attacks) is here; the
    server's side, once the updates are in, is :func:`finish_round`.
    """
    cfg = setup.cfg
    started = time.perf_counter()
    t = state.round_idx + 1
    sampled = sample_devices(
        cfg.num_devices, cfg.participation, numpy_rng(cfg.seed, "sample", t)
    )
    returned, lost = faults.arrivals(sampled, setup.device_sizes, cfg, t)
    updates, train_losses = _local_updates(state, setup, returned, t)
    return finish_round(
        state,
        setup,
        sampled=sampled,
        returned=returned,
        lost=lost,
        updates=updates,
        train_losses=train_losses,
        started=started,
    )


def finish_round(
    state: ServerState,
    setup: Setup,
    *,
    sampled: np.ndarray,
    returned: np.ndarray,
    lost: dict[int, str],
    updates: Updates,
    train_losses: torch.Tensor,
    started: float,
) -> tuple[ServerState, RoundRecord]:
    """The server's side of a round: screen the returned updates, aggregate them, adjust
    on the shared dataset, evaluate, and record.

    Row ``i`` of ``updates`` (a list of weights, or stacked along a leading device
    axis) and of ``train_losses`` comes from device ``returned[i]``; ``lost`` names
    the sampled devices that did not return and why. If no update survives, the
    aggregation model is the previous global model; the server adjustment still runs.
    :mod:`fedlearn_lab.flower` calls this too: a Flower run is served by the same code.
    """
    cfg, data, model = setup.cfg, setup.data, setup.model
    t = state.round_idx + 1
    reasons = faults.screen_updates(
        updates, state.weights, max_norm_ratio=cfg.max_norm_ratio
    )
    _check_updates(t, cfg, reasons)
    kept = [i for i, reason in enumerate(reasons) if reason is None]
    trained = [idx.shape[0] for idx in device_data(setup, returned)]
    hybrid, hybrid_flops = server_device(state, setup, t)
    everyone = _to_aggregate(updates, kept, trained, hybrid)
    aggregated = AGGREGATORS[cfg.aggregator](everyone) if everyone else state.weights
    aggregated, momentum = _momentum(cfg, state.weights, aggregated, state.momentum)
    info = _sampled_info(setup, returned[kept], t)
    update = server_update(setup, aggregated, info)
    adjusted = update.weights
    if cfg.server_momentum == "feddum" and adjusted is not aggregated:
        adjusted, momentum = _momentum(cfg, aggregated, adjusted, momentum)
    models = [aggregated] if adjusted is aggregated else [aggregated, adjusted]
    scores = ENGINES[cfg.engine].evaluate(model, models, data.x_test, data.y_test)
    (agg_acc, agg_loss), (acc, loss) = scores[0], scores[-1]
    train_loss = train_losses[kept].mean().item() if kept else math.nan
    _check_finite(t, cfg, loss=loss)
    rejected = {int(returned[i]): r for i, r in enumerate(reasons) if r is not None}
    cost = method_cost(setup, len(sampled), trained, update.flops + hybrid_flops, t)
    record = RoundRecord(
        round=t,
        devices=tuple(int(k) for k in sampled),
        num_samples=sum(trained[i] for i in kept),
        train_loss=train_loss,
        aggregate_accuracy=agg_acc,
        aggregate_loss=agg_loss,
        accuracy=acc,
        loss=loss,
        server_steps=update.steps,
        server_loss=update.loss,
        server_alpha=update.alpha,
        server_tau=update.tau,
        shared_divergence=setup.shared_divergence,
        sampled_divergence=info.divergence if info.num_sampled else None,
        **dataclasses.asdict(cost),
        seconds=time.perf_counter() - started,
        returned=tuple(int(k) for k in returned),
        rejected=tuple(rejected),
        failures=tuple(sorted({**lost, **rejected}.items())),
        kept_previous=not everyone,
    )
    return ServerState(round_idx=t, weights=adjusted, momentum=momentum), record


def _momentum(
    cfg: FedConfig, old: Weights, new: Weights, momentum: Weights | None
) -> tuple[Weights, Weights | None]:
    kind, beta = cfg.server_momentum, cfg.momentum_beta
    return momentum_step(kind, old, new, momentum, beta=beta)


def _to_aggregate(
    updates: Updates,
    kept: list[int],
    trained: list[int],
    hybrid: list[tuple[Weights, int]],
) -> Stacked | None:
    """The kept updates, then Hybrid-FL's server device, stacked with their sample
    counts; None if there are none."""
    counts = [trained[i] for i in kept] + [n for _, n in hybrid]
    parts = [take(updates, kept)] if kept else []
    if hybrid:
        parts.append(stack([w for w, _ in hybrid]))
    if not parts:
        return None
    if len(parts) == 1:
        return Stacked(parts[0], counts)
    return Stacked({k: torch.cat([p[k] for p in parts]) for k in parts[0]}, counts)


def _sampled_info(setup: Setup, device_ids: np.ndarray, t: int) -> SampledInfo:
    """FedDU's view of the devices whose updates were aggregated (their own data)."""
    if len(device_ids) == 0:
        return SampledInfo(t, 0, 0, math.nan)
    counts = setup.label_counts[device_ids].sum(0)
    total = int(counts.sum())
    divergence = js_divergence(counts / max(total, 1), setup.label_prior)
    return SampledInfo(t, len(device_ids), total, divergence)


def _local_updates(
    state: ServerState, setup: Setup, returned: np.ndarray, t: int
) -> tuple[Updates, torch.Tensor]:
    """Train the devices that return; the malicious ones among them then attack."""
    cfg, data = setup.cfg, setup.data
    if len(returned) == 0:
        return [], torch.zeros(0)
    bad = np.zeros(len(returned), dtype=bool)
    if cfg.malicious_fraction > 0:
        malicious = attacks.malicious_devices(
            cfg.num_devices, cfg.malicious_fraction, numpy_rng(cfg.seed, "malicious")
        )
        bad = np.isin(returned, malicious)
    own = [setup.device_indices[k] for k in returned]
    y = data.y_train
    if cfg.attack == "label_flip" and bad.any():
        y = y.clone()  # partitions are disjoint: flip each attacker's own labels
        for idx in (idx for idx, b in zip(own, bad, strict=True) if b):
            y[idx] = attacks.flip_labels(y[idx], data.num_classes)
    local_weights, train_losses = local.train_devices(
        setup.model,
        state.weights,
        data.x_train,
        y,
        device_data(setup, returned),
        epochs=cfg.local_epochs,
        lr=cfg.local_lr,
        batch_size=cfg.batch_size,
        generator=torch_generator(cfg.seed, "local", t),
        engine=cfg.engine,
        stacked=True,
    )
    if not bad.any():
        return local_weights, train_losses
    generator = torch_generator(cfg.seed, "attack", t)
    attack = {"attack": cfg.attack, "strength": cfg.attack_strength}
    updates = [
        attacks.corrupt(w, state.weights, **attack, generator=generator) if b else w
        for w, b in zip(unstack(local_weights), bad, strict=True)
    ]
    return updates, train_losses


def _check_updates(t: int, cfg: FedConfig, reasons: list[str | None]) -> None:
    if reasons and all(r == "non-finite" for r in reasons):
        raise DivergedError(
            f"round {t} diverged: every returned update holds NaN or Inf, so local "
            f"training blew up; the learning rate is probably too large: try a smaller "
            f"local_lr (now {cfg.local_lr:g}). {_kept(t)}"
        )


def _kept(t: int) -> str:
    return f"The history keeps rounds 1..{t - 1}." if t > 1 else "No round finished."


def _check_finite(t: int, cfg: FedConfig, **losses: float) -> None:
    bad = {name: value for name, value in losses.items() if not math.isfinite(value)}
    if bad:
        what = ", ".join(f"{name}={value}" for name, value in bad.items())
        attackers = (
            f" or the malicious devices' {cfg.attack} updates got through (try "
            f"aggregator='median' or a lower max_norm_ratio)"
            if cfg.malicious_fraction > 0
            else ""
        )
        raise DivergedError(
            f"round {t} diverged ({what}): the learning rate is probably too large "
            f"(try a smaller local_lr, now {cfg.local_lr:g}, or server_lr, now "
            f"{cfg.server_lr:g}){attackers}. {_kept(t)}"
        )


@dataclass
class Federation:
    """A server, its devices and their data: call ``step()`` or ``run()``.

    Parameters
    ----------
    cfg
        The experiment's settings.
    data
        The dataset to split over the devices (default: :func:`load_digits`).
    """

    cfg: FedConfig
    data: Dataset | None = None
    history: History = field(init=False)
    state: ServerState = field(init=False)
    setup: Setup = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.cfg, FedConfig):
            raise TypeError(f"cfg must be a FedConfig, got {type(self.cfg).__name__}")
        if self.data is None:
            self.data = load_digits()
        check_dataset(self.data, name="data")
        self.setup = make_setup(self.cfg, self.data)
        self.state = ServerState(0, clone(dict(self.setup.model.state_dict())))
        self.history = History()
        self._stop_requested = False

    @property
    def device_indices(self) -> list[torch.Tensor]:
        """One 1-D index tensor into ``data.x_train`` per device."""
        return self.setup.device_indices

    @property
    def shared_indices(self) -> torch.Tensor:
        """Indices into ``data.x_train`` of the server's shared dataset."""
        return self.setup.shared_indices

    @property
    def round(self) -> int:
        """Rounds finished so far."""
        return self.state.round_idx

    @property
    def finished(self) -> bool:
        """True once the round budget is spent or the target accuracy is reached."""
        target = self.cfg.target_accuracy
        reached = (
            target is not None
            and bool(self.history)
            and self.history[-1].accuracy >= target
        )
        return self.round >= self.cfg.rounds or reached

    def step(self) -> RoundRecord:
        """Run one round, record it, and return its record."""
        try:
            self.state, record = run_round(self.state, self.setup)
        except DivergedError as err:
            err.history = self.history  # the rounds before the failed one
            raise
        self.history.append(record)
        return record

    def run(self, on_round: Callable[[RoundRecord], None] | None = None) -> History:
        """Run rounds until the end condition or :meth:`stop`; ``on_round(record)``
        is called after each. Returns the history (kept even if a round fails)."""
        self._stop_requested = False
        while not self.finished and not self._stop_requested:
            record = self.step()
            if on_round is not None:
                on_round(record)
        return self.history

    def stop(self) -> None:
        """Ask :meth:`run` to return after the round in progress."""
        self._stop_requested = True

    def save(self, path: str | Path) -> Path:
        """Write a checkpoint of the run so far; :meth:`load` resumes it exactly."""
        from .checkpoint import save_federation

        return save_federation(self, path)

    @classmethod
    def load(cls, path: str | Path) -> Federation:
        """Resume the federation saved by :meth:`save` (``ValueError`` if the file is
        not a valid checkpoint)."""
        from .checkpoint import load_federation

        return load_federation(path)

    def publish(self) -> nn.Module:
        """The trained global model as a ready-to-use ``torch.nn.Module``."""
        model = copy.deepcopy(self.setup.model)  # the round's model is never changed
        model.load_state_dict(clone(self.state.weights))
        return model

    def device_accuracy(self) -> list[float]:
        """Accuracy of the global model on each device's own training data."""
        return per_device_accuracy(
            self.setup.model,
            self.state.weights,
            self.data.x_train,
            self.data.y_train,
            self.device_indices,
        )

    def label_counts(self) -> np.ndarray:
        """Samples of each class on each device, shape (num_devices, num_classes)."""
        return self.setup.label_counts.copy()

    def __repr__(self) -> str:
        return (
            f"Federation({self.data.name}, {self.cfg.num_devices} devices, "
            f"round {self.round}/{self.cfg.rounds})"
        )


@dataclass(frozen=True, eq=False)
class Result:
    """What :func:`run` returns: the history, the published model and its spread."""

    history: History
    model: nn.Module
    device_accuracy: list[float]
    config: FedConfig

    def __repr__(self) -> str:
        acc = np.asarray(self.device_accuracy)
        return (
            f"Result({self.history!r}, device accuracy {acc.mean():.3f} "
            f"(min {acc.min():.3f}, max {acc.max():.3f}))"
        )


def run(
    cfg: FedConfig | None = None,
    data: Dataset | None = None,
    on_round: Callable[[RoundRecord], None] | None = None,
) -> Result:
    """Run a whole experiment and publish its model."""
    fed = Federation(cfg or FedConfig(), data)
    fed.run(on_round)
    return Result(fed.history, fed.publish(), fed.device_accuracy(), fed.cfg)
