"""The federated loop: sample -> send -> train locally -> aggregate -> adjust -> evaluate.

``run_round`` is one round as a function of explicit state; ``Federation`` keeps that
state, the history, and the end condition; ``run`` is the one-call version.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from . import local
from .aggregation import fedavg
from .config import FedConfig
from .data import Dataset, load_digits
from .history import History, RoundRecord
from .metrics import evaluate, per_device_accuracy
from .models import make_model
from .partition import label_counts, partition_devices, shared_split
from .sampling import sample_devices
from .seeding import numpy_rng, torch_generator
from .server import server_adjust
from .weights import Weights, clone


class DivergedError(RuntimeError):
    """The global model's loss became NaN or Inf; earlier rounds stay in the history."""


@dataclass(frozen=True)
class ServerState:
    """What the server carries from round to round."""

    round_idx: int
    weights: Weights


@dataclass(frozen=True, eq=False)
class Setup:
    """Everything a round reads but never changes: config, data, model, partitions."""

    cfg: FedConfig
    data: Dataset
    model: nn.Module
    device_indices: list[torch.Tensor]
    shared_indices: torch.Tensor


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
            raise ValueError("shared_fraction leaves a device of the natural split empty")
    parts = partition_devices(labels[rest], cfg, numpy_rng(cfg.seed, "partition"), natural)
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
    """One round from ``state``; returns the next state and the round's record."""
    cfg, data, model = setup.cfg, setup.data, setup.model
    started = time.perf_counter()
    t = state.round_idx + 1
    sampled = sample_devices(cfg.num_devices, cfg.participation, numpy_rng(cfg.seed, "sample", t))
    indices = [setup.device_indices[k] for k in sampled]
    local_weights, train_losses = local.train_devices(
        model,
        state.weights,
        data.x_train,
        data.y_train,
        indices,
        epochs=cfg.local_epochs,
        lr=cfg.local_lr,
        batch_size=cfg.batch_size,
        generator=torch_generator(cfg.seed, "local", t),
    )
    sizes = [len(idx) for idx in indices]
    aggregated = fedavg(list(zip(local_weights, sizes, strict=True)))
    shared = setup.shared_indices
    adjusted, stats = server_adjust(
        model,
        aggregated,
        data.x_train[shared],
        data.y_train[shared],
        steps=cfg.server_steps,
        lr=cfg.server_lr,
        batch_size=cfg.server_batch_size,
        generator=torch_generator(cfg.seed, "server", t),
    )
    agg_acc, agg_loss = evaluate(model, aggregated, data.x_test, data.y_test)
    acc, loss = (
        (agg_acc, agg_loss)
        if adjusted is aggregated
        else evaluate(model, adjusted, data.x_test, data.y_test)
    )
    train_loss = train_losses.mean().item()
    _check_finite(t, cfg, train_loss=train_loss, loss=loss)
    record = RoundRecord(
        round=t,
        devices=tuple(int(k) for k in sampled),
        num_samples=sum(sizes),
        train_loss=train_loss,
        aggregate_accuracy=agg_acc,
        aggregate_loss=agg_loss,
        accuracy=acc,
        loss=loss,
        server_steps=int(stats["server_steps"]),
        server_loss=stats["server_loss"],
        seconds=time.perf_counter() - started,
    )
    return ServerState(round_idx=t, weights=adjusted), record


def _check_finite(t: int, cfg: FedConfig, **losses: float) -> None:
    bad = {name: value for name, value in losses.items() if not math.isfinite(value)}
    if bad:
        what = ", ".join(f"{name}={value}" for name, value in bad.items())
        raise DivergedError(
            f"round {t} diverged ({what}): the learning rate is probably too large; "
            f"try a smaller local_lr (now {cfg.local_lr}) or server_lr (now {cfg.server_lr}). "
            f"The history keeps rounds 1..{t - 1}."
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
        reached = target is not None and bool(self.history) and self.history[-1].accuracy >= target
        return self.round >= self.cfg.rounds or reached

    def step(self) -> RoundRecord:
        """Run one round, record it, and return its record."""
        self.state, record = run_round(self.state, self.setup)
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

    def publish(self) -> nn.Module:
        """The trained global model as a ready-to-use ``torch.nn.Module``."""
        model = make_model(
            self.cfg.model,
            self.data.input_shape,
            self.data.num_classes,
            torch.Generator().manual_seed(0),
            hidden=self.cfg.hidden,
        )
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
        parts = [idx.numpy() for idx in self.device_indices]
        return label_counts(self.data.y_train.numpy(), parts, self.data.num_classes)

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
