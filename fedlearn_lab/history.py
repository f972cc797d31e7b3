"""What a run leaves behind: a ``RoundRecord`` per round, gathered in a ``History``."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RoundRecord:
    """The outcome of one round (``round`` 1 is the first finished round).

    ``aggregate_*`` describe the aggregation model (FedAvg, before the server
    adjustment); ``accuracy`` and ``loss`` the adjusted model, which is the new global
    model. Both are measured on the test set. ``seconds`` is wall-clock time and is
    left out of comparisons, so equal seeds give equal records.
    """

    round: int
    devices: tuple[int, ...]
    num_samples: int
    train_loss: float
    aggregate_accuracy: float
    aggregate_loss: float
    accuracy: float
    loss: float
    server_steps: int
    server_loss: float
    # FedDU (feddu.py): alpha_t and tau_t (None unless server_schedule="feddu"), and
    # the label divergences D(P0) of the shared dataset (None if empty) and D(P't) of
    # the aggregated devices' data, both from the label distribution of all device
    # data.
    server_alpha: float | None = None
    server_tau: int | None = None
    shared_label_divergence: float | None = None
    sampled_label_divergence: float | None = None
    # Cost of the round (cost.py): bytes the server sent and received, FLOPs, and
    # the simulated wall-clock seconds of the round.
    bytes_sent: int = 0
    bytes_received: int = 0
    device_flops: int = 0
    server_flops: int = 0
    sim_seconds: float = 0.0
    seconds: float = field(default=0.0, compare=False)
    # Faults and adversaries: ``devices`` were sampled, ``returned`` sent an update in
    # time, ``rejected`` sent one that failed validation; ``failures`` gives the reason
    # for every sampled device left out ("dropout", "deadline", "keys", "shape",
    # "dtype", "non-finite", "norm"). ``kept_previous``: no update survived, so the
    # aggregation model is the previous global model. ``num_samples`` and
    # ``train_loss`` cover the aggregated devices only.
    returned: tuple[int, ...] = ()
    rejected: tuple[int, ...] = ()
    failures: tuple[tuple[int, str], ...] = ()
    kept_previous: bool = False

    def __eq__(self, other: object) -> bool:
        # Field by field like the generated __eq__, but NaN (e.g. ``server_loss`` of a
        # round without server steps) equals NaN, so equal seeds give equal records.
        if not isinstance(other, RoundRecord):
            return NotImplemented
        return all(_same(getattr(self, n), getattr(other, n)) for n in _COMPARED)

    def to_row(self) -> dict[str, Any]:
        """The record as one CSV row (device ids joined by spaces, failures as
        ``id:reason``)."""
        row = dataclasses.asdict(self)
        for name in ("devices", "returned", "rejected"):
            row[name] = " ".join(map(str, getattr(self, name)))
        row["failures"] = " ".join(f"{k}:{why}" for k, why in self.failures)
        return row

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RoundRecord:
        """Rebuild a record from ``dataclasses.asdict`` output that went through JSON
        (which turns tuples into lists)."""
        return cls(
            **{k: _as_tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        )


def _as_tuple(value: list) -> tuple:
    return tuple(_as_tuple(v) if isinstance(v, list) else v for v in value)


_FIELDS = [f.name for f in dataclasses.fields(RoundRecord)]
_COMPARED = [f.name for f in dataclasses.fields(RoundRecord) if f.compare]


def _same(a: Any, b: Any) -> bool:
    floats = isinstance(a, float) and isinstance(b, float)
    return (floats and math.isnan(a) and math.isnan(b)) or a == b


@dataclass
class History:
    """The rounds of a run, oldest first, with one list per metric for plotting."""

    records: list[RoundRecord] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[RoundRecord]:
        return iter(self.records)

    def __getitem__(self, i: int) -> RoundRecord:
        return self.records[i]

    def append(self, record: RoundRecord) -> None:
        """Add the record of the round just finished."""
        self.records.append(record)

    def column(self, name: str) -> list[Any]:
        """One field of every record, e.g. ``history.column("server_loss")``."""
        if name not in _FIELDS:
            raise ValueError(
                f"name must be a RoundRecord field ({', '.join(_FIELDS)}), got {name!r}"
            )
        return [getattr(r, name) for r in self.records]

    @property
    def rounds(self) -> list[int]:
        """Round numbers, 1-based."""
        return self.column("round")

    @property
    def accuracy(self) -> list[float]:
        """Test accuracy of the global model after the server adjustment."""
        return self.column("accuracy")

    @property
    def aggregate_accuracy(self) -> list[float]:
        """Test accuracy of the aggregation model, before the server adjustment."""
        return self.column("aggregate_accuracy")

    @property
    def loss(self) -> list[float]:
        """Test loss of the global model after the server adjustment."""
        return self.column("loss")

    @property
    def final_accuracy(self) -> float:
        """Accuracy after the last round (NaN before any round)."""
        return self.records[-1].accuracy if self.records else math.nan

    def mean_accuracy(self, last: int = 10) -> float:
        """Mean accuracy over the ``last`` rounds: steadier than the final accuracy
        when rounds swing (e.g. under attack)."""
        tail = self.accuracy[-last:]
        return sum(tail) / len(tail) if tail else math.nan

    def rounds_to(self, accuracy: float) -> int | None:
        """The first round whose global accuracy reaches ``accuracy``, or None."""
        return next((r.round for r in self.records if r.accuracy >= accuracy), None)

    def cumulative(self, name: str) -> list[float]:
        """Running total of a numeric field, e.g. ``cumulative("bytes_sent")``."""
        return list(itertools.accumulate(self.column(name)))

    @property
    def sim_time(self) -> list[float]:
        """Simulated seconds from the start to the end of each round (see cost.py)."""
        return self.cumulative("sim_seconds")

    def time_to(self, accuracy: float) -> float | None:
        """Simulated seconds until the accuracy first reaches ``accuracy``, or None."""
        return self._total_to(accuracy, self.column("sim_seconds"))

    def bytes_to(self, accuracy: float) -> int | None:
        """Bytes sent and received until the accuracy first reaches ``accuracy``."""
        per_round = [r.bytes_sent + r.bytes_received for r in self.records]
        return self._total_to(accuracy, per_round)

    def _total_to(self, accuracy: float, per_round: list[Any]) -> Any:
        # Sum over the rounds up to and including the first that reaches `accuracy`.
        for i, record in enumerate(self.records):
            if record.accuracy >= accuracy:
                return sum(per_round[: i + 1])
        return None

    def to_csv(self, path: str | Path) -> Path:
        """Write one row per round with a header; returns the path."""
        path = Path(path)
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=_FIELDS)
            writer.writeheader()
            writer.writerows(r.to_row() for r in self.records)
        return path

    def to_dataframe(self) -> Any:
        """The records as a pandas DataFrame, one row per round (needs pandas)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError(
                "History.to_dataframe needs pandas: pip install pandas "
                "(or use History.to_csv / History.records)"
            ) from None
        return pd.DataFrame([r.to_row() for r in self.records], columns=_FIELDS)

    def __repr__(self) -> str:
        if not self.records:
            return "History(0 rounds)"
        last = self.records[-1]
        return (
            f"History({len(self)} rounds, accuracy {last.accuracy:.3f}, "
            f"before adjustment {last.aggregate_accuracy:.3f})"
        )
