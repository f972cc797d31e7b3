"""The messages between the server and a device: what any ClientApp must read and
send to take part in a fedlearn_lab run (the table is in :mod:`fedlearn_lab.flower`).

The server reads every reply with :func:`read_reply`: a reply that breaks the
contract is refused with a reason in the vocabulary of in-process screening
(:func:`fedlearn_lab.aggregation.validate_update`: ``"keys"``, ``"shape"``,
``"dtype"``), or ``"metrics"`` for a missing or wrong metric.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord

from ..aggregation import validate_update
from ..config import FedConfig
from ..weights import Weights

#: Record keys of a TRAIN message and of its reply.
ARRAYS, CONFIG, CORRECTION, METRICS = "arrays", "config", "correction", "metrics"
#: Reasons a device is lost (it sent nothing usable in time).
ERROR, TIMEOUT = "error", "timeout"


@dataclass(frozen=True)
class Report:
    """What a device told the server about its data in a reply."""

    num_examples: int
    label_counts: tuple[int, ...] | None = None  # only when the server asked


def train_config(
    cfg: FedConfig,
    *,
    round_idx: int,
    device_id: int,
    mode: str,
    dataset: str,
    num_classes: int,
    input_shape: tuple[int, ...],
) -> ConfigRecord:
    """The ``config`` record of a TRAIN message to device ``device_id``."""
    return ConfigRecord(
        {
            "round-idx": round_idx,
            "device-id": device_id,
            "local-epochs": cfg.local_epochs,
            "local-lr": float(cfg.local_lr),
            "batch-size": cfg.batch_size,
            "proximal-mu": float(cfg.proximal_mu),
            "label-counts": wants_label_counts(cfg),
            "num-classes": num_classes,
            "input-shape": [int(n) for n in input_shape],
            "seed": cfg.seed,
            "mode": mode,
            "dataset": dataset,
            "fed-config": json.dumps(cfg.to_dict()),
        }
    )


def wants_label_counts(cfg: FedConfig) -> bool:
    """Does the server need the devices' label counts? Only FedDU's schedule uses
    them (D(P't), the label divergence of the aggregated devices' data)."""
    return cfg.shared_use == "adjust" and cfg.server_schedule == "feddu"


class Refused(ValueError):
    """A reply that breaks the contract; ``reason`` is the History's word for it."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def read_reply(
    reply: Message, reference: Weights, *, num_classes: int, label_counts: bool
) -> tuple[Weights, float, Report]:
    """The weights, mean training loss and report of a (non-error) TRAIN reply.

    ``reference`` is the global weights the device was sent: the reply's must have
    its keys, shapes and dtypes. Raises :class:`Refused` naming what is wrong.
    NaN or Inf weights pass here: the round's screening rejects them as
    ``"non-finite"``, as in-process.
    """
    content = reply.content
    arrays = content.get(ARRAYS) if ARRAYS in content else None
    if not isinstance(arrays, ArrayRecord):
        raise Refused("keys", f"no ArrayRecord {ARRAYS!r}")
    try:
        weights = dict(arrays.to_torch_state_dict())
    except Exception as err:  # a record torch cannot read: it is not weights
        raise Refused(
            "dtype", f"{ARRAYS!r} is not a torch state dict ({err})"
        ) from None
    if (reason := validate_update(weights, reference)) not in (None, "non-finite"):
        raise Refused(reason, f"{ARRAYS!r} differs from the global weights")
    metrics = content.get(METRICS) if METRICS in content else None
    if not isinstance(metrics, MetricRecord):
        raise Refused("metrics", f"no MetricRecord {METRICS!r}")
    report = Report(
        _count(metrics, "num-examples"),
        _label_counts(metrics, num_classes) if label_counts else None,
    )
    loss = metrics.get("train-loss")
    if isinstance(loss, bool) or not isinstance(loss, int | float):
        raise Refused("metrics", f"train-loss must be a number, got {loss!r}")
    if not math.isfinite(loss):
        raise Refused("metrics", f"train-loss must be finite, got {loss!r}")
    return weights, float(loss), report


def _count(metrics: Mapping, key: str) -> int:
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise Refused("metrics", f"{key} must be an int > 0, got {value!r}")
    return value


def _label_counts(metrics: Mapping, num_classes: int) -> tuple[int, ...]:
    counts = metrics.get("label-counts")
    ok = (
        isinstance(counts, list)
        and len(counts) == num_classes
        and all(isinstance(c, int) and not isinstance(c, bool) for c in counts)
        and min(counts) >= 0
    )
    if not ok:
        raise Refused(
            "metrics",
            f"label-counts must be {num_classes} ints >= 0 (FedDU asked), "
            f"got {counts!r}",
        )
    if sum(counts) != metrics.get("num-examples"):
        raise Refused("metrics", "label-counts must add up to num-examples")
    return tuple(counts)


def label_counts_of(y: np.ndarray, num_classes: int) -> list[int]:
    """What a device reports as ``label-counts``: its samples of each class."""
    return np.bincount(y, minlength=num_classes).tolist()
