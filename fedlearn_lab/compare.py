"""Run several methods over several seeds (and settings); summarise each method."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import FedConfig
from .data import Dataset
from .federation import Federation
from .history import History
from .methods import METHODS
from .state import ServerState
from .weights import weights_bytes


def compare(
    cfg: FedConfig,
    data: Dataset,
    methods: Iterable[str] = tuple(METHODS),
    seeds: Iterable[int] = (0, 1, 2),
    on_run: Callable[[str, int, History], None] | None = None,
) -> dict[str, list[History]]:
    """One history per seed for each named method (:data:`METHODS`), from ``cfg``.

    A combination with the server adjustment is a name too (``"fedprox+fixed"``);
    for any other mix, run ``Federation(cfg.replace(...))`` yourself.
    ``on_run(name, seed, history)`` is called after each run, in order.
    """
    names, seeds = _methods(methods), list(seeds)
    jobs = [(name, seed) for name in names for seed in seeds]
    configs = [cfg.replace(**METHODS[name], seed=seed) for name, seed in jobs]
    results: dict[str, list[History]] = {}
    for (name, seed), config in zip(jobs, configs, strict=True):
        history = Federation(config, data).run()
        results.setdefault(name, []).append(history)
        if on_run is not None:
            on_run(name, seed, history)
    return results


def compare_settings(
    cfg: FedConfig,
    data: Dataset,
    settings: Mapping[str, Mapping[str, Any]],
    methods: Iterable[str] = tuple(METHODS),
    seeds: Iterable[int] = (0, 1, 2),
) -> dict[str, dict[str, list[History]]]:
    """:func:`compare` under each of ``settings`` (a name -> the field changes it
    makes, e.g. ``{"shards 1": {"partition": "shards", "skew": 1}}``, applied after
    the method's, so a setting may also change a method's hyperparameter); returns
    ``{setting: {method: [history per seed]}}``. Every config is built, and so
    checked, before the first run."""
    names, seeds = _methods(methods), list(seeds)
    jobs = [(s, name, seed) for s in settings for name in names for seed in seeds]
    configs = [
        cfg.replace(**{**METHODS[name], **settings[s], "seed": seed})
        for s, name, seed in jobs
    ]
    results: dict[str, dict[str, list[History]]] = {s: {} for s in settings}
    for (s, name, _), config in zip(jobs, configs, strict=True):
        results[s].setdefault(name, []).append(Federation(config, data).run())
    return results


def _methods(methods: Iterable[str]) -> list[str]:
    names = list(methods)
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise ValueError(f"methods must be names in {sorted(METHODS)}, got {unknown}")
    return names


@dataclass(frozen=True)
class Summary:
    """One method's means over seeds; the ``*_to`` means count only seeds that reached
    the target (``reached`` of ``runs``) and are None if none did.

    ``mean_accuracy`` is the mean over seeds of each run's mean accuracy over its
    last ``last`` rounds (:meth:`History.mean_accuracy`), ``spread`` their standard
    deviation over seeds; ``bytes_per_round`` counts both directions.
    """

    method: str
    final_accuracy: float
    runs: int
    reached: int
    rounds_to: float | None
    time_to: float | None
    bytes_to: float | None
    mean_accuracy: float
    spread: float
    bytes_per_round: float


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def summarize(
    results: Mapping[str, Sequence[History]], target: float, last: int = 5
) -> list[Summary]:
    """Per method: final accuracy and the mean over the ``last`` rounds (with its
    spread over seeds); rounds, simulated seconds and bytes to ``target``."""
    if isinstance(last, bool) or not isinstance(last, int) or last < 1:
        raise ValueError(f"last must be an integer >= 1, got {last!r}")
    summaries = []
    for name, runs in results.items():
        tails = [h.mean_accuracy(last) for h in runs]
        traffic = [r.bytes_sent + r.bytes_received for h in runs for r in h]
        summaries.append(
            Summary(
                method=name,
                final_accuracy=float(np.mean([h.final_accuracy for h in runs])),
                runs=len(runs),
                reached=sum(h.rounds_to(target) is not None for h in runs),
                rounds_to=_mean([h.rounds_to(target) for h in runs]),
                time_to=_mean([h.time_to(target) for h in runs]),
                bytes_to=_mean([h.bytes_to(target) for h in runs]),
                mean_accuracy=float(np.mean(tails)),
                spread=float(np.std(tails)),
                bytes_per_round=float(np.mean(traffic)),
            )
        )
    return summaries


def _show(value: float | None, fmt: str) -> str:
    return "-" if value is None or math.isnan(value) else format(value, fmt)


def format_summary(summaries: Sequence[Summary], target: float) -> str:
    """A plain-text table of :func:`summarize`'s output."""
    lines = [
        f"{'method':<13} {'final acc':>9} {'reached':>7} {'rounds':>6} "
        f"{'sim s':>6} {'MB':>6}   (to accuracy {target:g})"
    ]
    for s in summaries:
        megabytes = None if s.bytes_to is None else s.bytes_to / 1e6
        lines.append(
            f"{s.method:<13} {s.final_accuracy:>9.3f} {f'{s.reached}/{s.runs}':>7} "
            f"{_show(s.rounds_to, '.1f'):>6} {_show(s.time_to, '.2f'):>6} "
            f"{_show(megabytes, '.2f'):>6}"
        )
    return "\n".join(lines)


def format_grid(summaries: Mapping[str, Sequence[Summary]], what: str) -> str:
    """A plain-text table, one row per method and one column per setting, of
    ``what``: ``"accuracy"`` (mean accuracy ± its spread over seeds) or ``"rounds"``
    (mean rounds to the target over the seeds that reached it, and how many did)."""
    cells = {"accuracy": _accuracy_cell, "rounds": _rounds_cell}
    if what not in cells:
        raise ValueError(f"what must be one of {sorted(cells)}, got {what!r}")
    settings = list(summaries)
    methods = list(dict.fromkeys(s.method for ss in summaries.values() for s in ss))
    by = {(name, s.method): s for name, ss in summaries.items() for s in ss}
    width = max([13, *(len(m) for m in methods)])
    lines = [f"{'':<{width}}" + "".join(f"{name:>14}" for name in settings)]
    for method in methods:
        row = [cells[what](by.get((name, method))) for name in settings]
        lines.append(f"{method:<{width}}" + "".join(f"{c:>14}" for c in row))
    return "\n".join(lines)


def _accuracy_cell(s: Summary | None) -> str:
    return "" if s is None else f"{s.mean_accuracy:.3f}±{s.spread:.3f}"


def _rounds_cell(s: Summary | None) -> str:
    if s is None:
        return ""
    return f"{_show(s.rounds_to, '.1f')} ({s.reached}/{s.runs})"


def state_bytes(state: ServerState) -> dict[str, int]:
    """What a method keeps between rounds besides the global model, in bytes: on the
    ``"server"`` (FedAvgM's momentum, the adaptive optimisers' m and v, SCAFFOLD's c)
    and on ``"each device"`` (SCAFFOLD's c_i; the simulation keeps them all in
    ``state.controls``, a real device keeps its own)."""
    server = [state.momentum, *(state.moments or ())]
    device = 0
    if state.controls is not None:
        c, c_all = state.controls
        server.append(c)
        device = weights_bytes({k: v[0] for k, v in c_all.items()})
    kept = sum(weights_bytes(w) for w in server if w is not None)
    return {"server": kept, "each device": device}


def adjustment_gain(histories: Sequence[History], last: int = 10) -> float:
    """Mean accuracy change due to the server adjustment (after minus before) over
    the ``last`` rounds of each run: below 0, the adjustment hurts."""
    changes = [np.subtract(h.accuracy, h.aggregate_accuracy)[-last:] for h in histories]
    return float(np.mean(changes))
