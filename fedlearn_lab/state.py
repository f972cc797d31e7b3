"""What a round reads and what it carries to the next: ``Setup`` and ``ServerState``.

``make_setup`` splits the data once: the server's shared dataset, then one partition
per device, and builds the model. Everything derived from that split (label counts,
the label prior, sizes, the model's bytes and FLOPs) is computed once, on first use,
and so are the two tables a round reads: its engine (:data:`ENGINES`) and where the
shared dataset goes (:data:`SHARED_USES`, below).

Where the shared dataset goes (``FedConfig.shared_use``; the server's side of each is
in :mod:`fedlearn_lab.server`):

- ``"adjust"``: the server adjustment, SGD steps on the shared dataset after
  aggregation (``server_schedule``: ``"fixed"`` or FedDU's ``"feddu"``).
- ``"hybrid"``: Hybrid-FL (Yoshida et al. 2019, https://arxiv.org/abs/1905.07210): the
  server trains alongside the devices as one more participant.
- ``"data_sharing"``: data sharing (Zhao et al. 2018,
  https://arxiv.org/abs/1806.00582): every device also trains on a copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import FedConfig
from .cost import LABEL_BYTES, CostModel, forward_macs, train_flops
from .data import Dataset
from .engines import ENGINES, Engine
from .feddu import label_distribution, label_divergence
from .models import make_model
from .partition import label_counts, partition_devices, shared_split
from .scaffold import initial_controls
from .seeding import numpy_rng, torch_generator
from .weights import Weights, clone, weights_bytes


@dataclass(frozen=True)
class SharedUse:
    """Where the shared dataset enters a round (one row of :data:`SHARED_USES`)."""

    adjusts: bool = False  # the server adjustment after aggregation
    trains_alongside: bool = False  # Hybrid-FL: the server is one more participant
    copies_to_devices: bool = False  # data sharing: devices also train on a copy


SHARED_USES: dict[str, SharedUse] = {
    "adjust": SharedUse(adjusts=True),
    "hybrid": SharedUse(trains_alongside=True),
    "data_sharing": SharedUse(copies_to_devices=True),
}


@dataclass(frozen=True)
class ServerState:
    """What the server carries from round to round: the global ``weights``, and
    the memory of the method, if it has one: FedAvgM's or FedDUM's ``momentum``
    (momentum.py), FedAdam's, FedYogi's or FedAdagrad's ``moments`` (m, v;
    server_opt.py), SCAFFOLD's ``controls`` (c, and every device's c_i stacked;
    scaffold.py)."""

    round_idx: int
    weights: Weights
    momentum: Weights | None = None
    moments: tuple[Weights, Weights] | None = None
    controls: tuple[Weights, Weights] | None = None


@dataclass(frozen=True, eq=False)
class Setup:
    """Everything a round reads but never changes: config, data, model, partitions."""

    cfg: FedConfig
    data: Dataset
    model: nn.Module
    device_indices: list[torch.Tensor]
    shared_indices: torch.Tensor

    @cached_property
    def engine(self) -> Engine:
        """How the round computes (``cfg.engine``), looked up once."""
        return ENGINES[self.cfg.engine]

    @cached_property
    def use(self) -> SharedUse:
        """Where the shared dataset goes (``cfg.shared_use``), looked up once."""
        return SHARED_USES[self.cfg.shared_use]

    @cached_property
    def training(self) -> dict[str, Any]:
        """How every participant trains locally (the engines' keyword arguments)."""
        cfg = self.cfg
        return {
            "epochs": cfg.local_epochs,
            "lr": cfg.local_lr,
            "batch_size": cfg.batch_size,
            "mu": cfg.proximal_mu,  # FedProx (0: plain SGD)
        }

    @cached_property
    def server_training(self) -> dict[str, Any]:
        """How the server trains on the shared dataset (``server_adjust``'s keyword
        arguments, with this engine's SGD)."""
        cfg = self.cfg
        return {
            "lr": cfg.server_lr,
            "batch_size": cfg.server_batch_size,
            "sgd": self.engine.sgd,
        }

    @cached_property
    def train_indices(self) -> list[torch.Tensor]:
        """What each device trains on: its own data (plus a copy of the shared
        dataset under data sharing)."""
        if not self.use.copies_to_devices or len(self.shared_indices) == 0:
            return self.device_indices
        return [torch.cat([idx, self.shared_indices]) for idx in self.device_indices]

    @cached_property
    def train_sizes(self) -> list[int]:
        """Each device's number of training samples (with the shared copy, if any)."""
        return [len(idx) for idx in self.train_indices]

    @cached_property
    def cost_model(self) -> CostModel:
        """What a round costs (see cost.py), with this run's constants bound."""
        cfg, x_train = self.cfg, self.data.x_train
        copies = self.use.copies_to_devices
        sample_bytes = x_train.shape[1] * x_train.element_size() + LABEL_BYTES
        return CostModel(
            cfg.device_gflops,
            cfg.server_gflops,
            cfg.device_mbps,
            cfg.server_mbps,
            model_bytes=self.model_bytes * (2 if cfg.scaffold else 1),  # c with w
            flops_per_sample=train_flops(self.macs, cfg.local_epochs),
            server_alongside=self.use.trains_alongside,
            broadcast_bytes=len(self.shared_indices) * sample_bytes if copies else 0,
            broadcast_count=cfg.num_devices if copies else 0,
        )

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
    def test_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The test set's features and labels."""
        return self.data.x_test, self.data.y_test

    @cached_property
    def shared_label_divergence(self) -> float | None:
        """D(P0): how far the shared dataset's labels are from P (None if empty)."""
        labels = self.shared_data[1].numpy()
        if len(labels) == 0:
            return None
        own = label_distribution(labels, self.data.num_classes)
        return label_divergence(own, self.label_prior)

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

    def initial_state(self) -> ServerState:
        """Round 0: the model's initial weights (a copy), no momentum or moments yet,
        and SCAFFOLD's controls at zero."""
        weights = clone(dict(self.model.state_dict()))
        controls = None
        if self.cfg.scaffold:
            controls = initial_controls(weights, self.cfg.num_devices)
        return ServerState(0, weights, controls=controls)


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
    return Setup(
        cfg=cfg,
        data=data,
        model=initial_model(cfg, data),
        device_indices=[torch.from_numpy(rest[p]) for p in parts],
        shared_indices=torch.from_numpy(shared),
    )


def initial_model(cfg: FedConfig, data: Dataset) -> nn.Module:
    """``cfg``'s model for ``data``'s samples and classes, with the initial weights
    of the seed (the same wherever it is built: in-process, a Flower server)."""
    return make_model(
        cfg.model,
        data.input_shape,
        data.num_classes,
        torch_generator(cfg.seed, "init"),
        hidden=cfg.hidden,
    )
