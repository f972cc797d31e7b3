"""Run several methods over several seeds; summarise what each took to reach a goal."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .config import FedConfig
from .data import Dataset
from .federation import Federation
from .history import History
from .methods import METHODS


def compare(
    cfg: FedConfig,
    data: Dataset,
    methods: Iterable[str] = tuple(METHODS),
    seeds: Iterable[int] = (0, 1, 2),
    on_run: Callable[[str, int, History], None] | None = None,
) -> dict[str, list[History]]:
    """One history per seed for each named method (:data:`METHODS`), from ``cfg``."""
    unknown = [name for name in methods if name not in METHODS]
    if unknown:
        raise ValueError(f"methods must be names in {sorted(METHODS)}, got {unknown}")
    results: dict[str, list[History]] = {}
    for name in methods:
        for seed in seeds:
            history = Federation(cfg.replace(**METHODS[name], seed=seed), data).run()
            results.setdefault(name, []).append(history)
            if on_run is not None:
                on_run(name, seed, history)
    return results


@dataclass(frozen=True)
class Summary:
    """One method's means over seeds; the ``*_to`` means count only seeds that reached
    the target (``reached`` of ``runs``) and are None if none did."""

    method: str
    final_accuracy: float
    runs: int
    reached: int
    rounds_to: float | None
    time_to: float | None
    bytes_to: float | None


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def summarize(results: Mapping[str, Sequence[History]], target: float) -> list[Summary]:
    """Per method: final accuracy; rounds, simulated seconds and bytes to ``target``."""
    return [
        Summary(
            method=name,
            final_accuracy=float(np.mean([h.final_accuracy for h in runs])),
            runs=len(runs),
            reached=sum(h.rounds_to(target) is not None for h in runs),
            rounds_to=_mean([h.rounds_to(target) for h in runs]),
            time_to=_mean([h.time_to(target) for h in runs]),
            bytes_to=_mean([h.bytes_to(target) for h in runs]),
        )
        for name, runs in results.items()
    ]


def format_summary(summaries: Sequence[Summary], target: float) -> str:
    """A plain-text table of :func:`summarize`'s output."""

    def show(value: float | None, fmt: str) -> str:
        return "-" if value is None or math.isnan(value) else format(value, fmt)

    lines = [
        f"{'method':<13} {'final acc':>9} {'reached':>7} {'rounds':>6} "
        f"{'sim s':>6} {'MB':>6}   (to accuracy {target:g})"
    ]
    for s in summaries:
        megabytes = None if s.bytes_to is None else s.bytes_to / 1e6
        lines.append(
            f"{s.method:<13} {s.final_accuracy:>9.3f} {f'{s.reached}/{s.runs}':>7} "
            f"{show(s.rounds_to, '.1f'):>6} {show(s.time_to, '.2f'):>6} "
            f"{show(megabytes, '.2f'):>6}"
        )
    return "\n".join(lines)


def adjustment_gain(histories: Sequence[History], last: int = 10) -> float:
    """Mean accuracy change due to the server adjustment (after minus before) over
    the ``last`` rounds of each run: below 0, the adjustment hurts."""
    changes = [np.subtract(h.accuracy, h.aggregate_accuracy)[-last:] for h in histories]
    return float(np.mean(changes))
