"""The object a lesson holds: a ``Federation`` runs rounds and keeps their history.

``Federation`` keeps the state between rounds, the history and the end condition;
``run`` is the one-call version, which also publishes the model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import load_checkpoint, save_checkpoint
from .config import FedConfig
from .data import Dataset, check_dataset, load_digits
from .history import History, RoundRecord
from .reference import per_device_accuracy
from .rounds import DivergedError, run_round
from .state import ServerState, Setup, make_setup
from .weights import clone


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
        self.state = self.setup.initial_state()
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
        return save_checkpoint(path, self.setup, self.state, self.history)

    @classmethod
    def load(cls, path: str | Path) -> Federation:
        """Resume the federation saved by :meth:`save` (``ValueError`` if the file is
        not a valid checkpoint)."""
        setup, state, history = load_checkpoint(path)
        fed = cls(setup.cfg, setup.data)
        fed.setup, fed.state, fed.history = setup, state, history
        return fed

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
