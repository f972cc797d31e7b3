"""Deployment mode: a server that knows only what a real server knows.

In the lab mode every process derives every partition from the seed, so the server
knows every device's data (a lab's shortcut). In deployment mode:

- the server holds the model, the shared dataset and a test set
  (:func:`server_setup`), and knows the devices only from what their replies report
  (:class:`ServerSetup`): sample counts, and label counts when FedDU asks;
- each device loads only its own data (:func:`device_data`): a ``.npz`` file with
  ``x`` and ``y`` named by its node config ``data-path``, or its partition of a named
  dataset; it draws its minibatches from its own random stream
  (:func:`train_own`).

:func:`write_data_files` writes a lab dataset as such files: ``server.npz`` (the
shared dataset and the test set) and ``device-K.npz`` (device K's partition), split
exactly as the lab mode splits it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import FedConfig
from ..data import Dataset
from ..models import make_model
from ..reference import batch_orders, minibatches, sgd
from ..seeding import torch_generator
from ..state import Setup, initial_model, make_setup
from ..weights import Weights
from .contract import Report

SERVER_FILE = "server.npz"


def device_file(device_id: int) -> str:
    """The file name of device ``device_id``'s data in a folder of data files."""
    return f"device-{device_id}.npz"


MODES = ("lab", "deployment")


def check_mode(mode: str) -> None:
    """Raise ``ValueError`` unless ``mode`` is one of :data:`MODES`."""
    if mode not in MODES:
        raise ValueError(f"mode must be 'lab' or 'deployment', got {mode!r}")


#: FedConfig settings that only a lab can simulate, and why (deployment refuses them).
LAB_ONLY = {
    "dropout": "devices drop out for real in a deployment",
    "deadline": "a deployment's deadline is the round's timeout",
    "malicious_fraction": "attacks are simulated by the lab's own devices",
}


def check_deployable(cfg: FedConfig) -> None:
    """Raise ``ValueError`` for a setting that only the lab mode can run."""
    defaults = FedConfig()
    for name, why in LAB_ONLY.items():
        if getattr(cfg, name) != getattr(defaults, name):
            raise ValueError(
                f"{name}={getattr(cfg, name)!r} is a lab mode setting ({why}); "
                f"use mode='lab' or leave {name} at {getattr(defaults, name)!r}"
            )
    if cfg.shared_use == "data_sharing":
        raise ValueError(
            "shared_use='data_sharing' is a lab mode setting (the server would send "
            "its shared dataset to every device); use 'adjust' or 'hybrid'"
        )


@dataclass(frozen=True, eq=False)
class ServerSetup(Setup):
    """A deployed server's :class:`~fedlearn_lab.state.Setup`: its ``data`` holds
    only the shared dataset (as the training set) and a test set, and what it knows
    of the devices is what their replies reported, in ``reports`` (device id ->
    :class:`~fedlearn_lab.flower.contract.Report`, the latest). A device that has
    not reported counts 0 samples; the label prior P is that of the devices that
    reported their label counts."""

    reports: dict[int, Report] = field(default_factory=dict)

    @property
    def device_sizes(self) -> list[int]:  # type: ignore[override]
        """Each device's reported number of training samples (0: not yet)."""
        sizes = {k: r.num_examples for k, r in self.reports.items()}
        return [sizes.get(k, 0) for k in range(self.cfg.num_devices)]

    @property
    def train_sizes(self) -> list[int]:  # type: ignore[override]
        """What FedAvg weighs each device by: its reported sample count."""
        return self.device_sizes

    @property
    def label_counts(self) -> np.ndarray:  # type: ignore[override]
        """Reported samples of each class, shape (num_devices, num_classes)."""
        counts = np.zeros((self.cfg.num_devices, self.data.num_classes), np.int64)
        for k, report in self.reports.items():
            if report.label_counts is not None:
                counts[k] = report.label_counts
        return counts

    @property
    def label_prior(self) -> np.ndarray:  # type: ignore[override]
        """P, from the label counts reported so far."""
        counts = self.label_counts.sum(0)
        return counts / max(int(counts.sum()), 1)

    @property
    def shared_label_divergence(self) -> float | None:  # type: ignore[override]
        """D(P0), once devices have reported label counts (None before)."""
        if self.label_counts.sum() == 0:
            return None
        # Setup's own computation, recomputed each time: reports change the prior.
        return Setup.shared_label_divergence.func(self)


def server_setup(cfg: FedConfig, server_data: Dataset) -> ServerSetup:
    """The deployed server's setup: ``server_data``'s training set is the shared
    dataset, its test set the test set; the model is initialised as the lab's."""
    check_deployable(cfg)
    return ServerSetup(
        cfg=cfg,
        data=server_data,
        model=initial_model(cfg, server_data),
        device_indices=[],
        shared_indices=torch.arange(len(server_data.y_train)),
    )


def server_data_of(setup: Setup) -> Dataset:
    """What a deployed server holds of a lab setup: its shared dataset and test set."""
    data = setup.data
    x, y = setup.shared_data
    return Dataset(
        x, y, data.x_test, data.y_test, data.num_classes, data.name, data.input_shape
    )


def write_data_files(cfg: FedConfig, data: Dataset, folder: str | Path) -> Path:
    """Write ``server.npz`` and one ``device-K.npz`` per device into ``folder``, split
    as the lab mode splits ``data`` for ``cfg``; returns the folder. Refuses a folder
    that already holds any of these files (nothing is overwritten)."""
    return write_setup(make_setup(cfg, data), folder)


def write_setup(setup: Setup, folder: str | Path) -> Path:
    """:func:`write_data_files` for a setup already made."""
    data, cfg = setup.data, setup.cfg
    folder = Path(folder)
    names = [SERVER_FILE] + [device_file(k) for k in range(cfg.num_devices)]
    if taken := [n for n in names if (folder / n).exists()]:
        raise FileExistsError(f"{folder} already holds {taken[0]}: choose a new folder")
    folder.mkdir(parents=True, exist_ok=True)
    server = server_data_of(setup)
    np.savez(
        folder / SERVER_FILE,
        x_shared=server.x_train.numpy(),
        y_shared=server.y_train.numpy(),
        x_test=server.x_test.numpy(),
        y_test=server.y_test.numpy(),
        num_classes=server.num_classes,
        input_shape=np.array(server.input_shape),
    )
    for k, idx in enumerate(setup.device_indices):
        x, y = data.x_train[idx].numpy(), data.y_train[idx].numpy()
        np.savez(folder / device_file(k), x=x, y=y)
    return folder


def load_server_data(path: str | Path, name: str = "deployment") -> Dataset:
    """The shared dataset and test set from a ``server.npz``."""
    arrays = _npz(path, ("x_shared", "y_shared", "x_test", "y_test", "num_classes"))
    shape = arrays.get("input_shape")
    return Dataset(
        torch.as_tensor(arrays["x_shared"], dtype=torch.float32),
        torch.as_tensor(arrays["y_shared"], dtype=torch.int64),
        torch.as_tensor(arrays["x_test"], dtype=torch.float32),
        torch.as_tensor(arrays["y_test"], dtype=torch.int64),
        int(arrays["num_classes"]),
        name,
        tuple(int(n) for n in shape) if shape is not None else (),
    )


def load_device_file(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """A device's own data from a ``.npz`` with ``x`` (one row per sample) and
    ``y`` (integer labels)."""
    arrays = _npz(path, ("x", "y"))
    x, y = arrays["x"], arrays["y"]
    if x.ndim < 2 or len(x) != len(y) or len(y) == 0 or y.ndim != 1:
        raise ValueError(
            f"{path}: x must hold one row per sample and y one label each, got "
            f"shapes {x.shape} and {y.shape}"
        )
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise ValueError(f"{path}: y must hold integer labels >= 0")
    x_t = torch.as_tensor(x, dtype=torch.float32).flatten(1)
    return x_t, torch.as_tensor(y, dtype=torch.int64)


def _npz(path: str | Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as file:
            arrays = {k: file[k] for k in file.files}
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read the data file {path}: {err}") from None
    if missing := [k for k in keys if k not in arrays]:
        raise ValueError(f"{path} lacks the arrays {missing} (it has {list(arrays)})")
    return arrays


@functools.lru_cache(maxsize=8)
def device_data(data_path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`load_device_file`, once per process and file."""
    return load_device_file(data_path)


@functools.lru_cache(maxsize=8)
def _model(cfg: FedConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return make_model(
        cfg.model, input_shape, num_classes, torch.Generator(), hidden=cfg.hidden
    )


def train_own(
    cfg: FedConfig,
    weights: Weights,
    data: tuple[torch.Tensor, torch.Tensor],
    *,
    round_idx: int,
    device_id: int,
    input_shape: tuple[int, ...],
    num_classes: int,
    correction: Weights | None = None,
) -> tuple[Weights, float]:
    """A deployed device's local training: ``local_epochs`` of SGD on its own data,
    minibatches from its own stream (seed, round, device id); FedProx's ``mu`` and
    SCAFFOLD's ``correction`` as in-process. Returns its weights and mean loss."""
    x, y = data
    generator = torch_generator(cfg.seed, "device", round_idx, device_id)
    order = batch_orders([len(y)], epochs=cfg.local_epochs, generator=generator)[0]
    new, losses = sgd(
        _model(cfg, input_shape, num_classes),
        weights,
        x,
        y,
        minibatches(order, len(y), cfg.batch_size),
        lr=cfg.local_lr,
        mu=cfg.proximal_mu,
        correction=correction,
    )
    return new, losses.mean().item()
