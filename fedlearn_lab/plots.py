"""Figures from records. Matplotlib only: each function takes ``ax=None`` and returns
the Figure; nothing here calls ``show()``.

One palette for the playground and every lesson: :data:`PALETTE` gives each method of
:data:`fedlearn_lab.METHODS` its colour (plain FedAvg is always black, the server
adjustment always vermillion), and :data:`RUN_COLORS` lists the same ten colours in
the order runs take them. They come from Okabe & Ito's colour-blind safe set plus
four of Paul Tol's (https://personal.sron.nl/~pault/).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .config import FedConfig
from .history import History

PALETTE: dict[str, str] = {
    "fedavg": "#000000",  # plain FedAvg: black
    "fixed": "#D55E00",  # the server adjustment (fixed steps): vermillion
    "feddu": "#0072B2",  # blue
    "hybrid": "#009E73",  # bluish green
    "data_sharing": "#CC79A7",  # reddish purple
    "fedprox": "#E69F00",  # orange
    "scaffold": "#56B4E9",  # sky blue
    "fedadam": "#882255",  # wine
    "fedyogi": "#332288",  # indigo
    "fedadagrad": "#661100",  # brown
}
# Distinct colours in the order runs take them: plain FedAvg and the server adjustment
# first, so a lesson that plots "FedAvg" then "adjusted" gets their colours.
RUN_COLORS: list[str] = list(dict.fromkeys(PALETTE.values()))
# Runs named in plain words; a fixed-steps run is named by its steps.
METHOD_NAMES: dict[str, str] = {
    "fedavg": "plain FedAvg",
    "fixed": "server steps",
    "feddu": "FedDU",
    "hybrid": "Hybrid-FL",
    "data_sharing": "data sharing",
    "fedprox": "FedProx",
    "scaffold": "SCAFFOLD",
    "fedadam": "FedAdam",
    "fedyogi": "FedYogi",
    "fedadagrad": "FedAdagrad",
}


def method_color(name: str) -> str:
    """The palette colour of a :data:`fedlearn_lab.METHODS` name."""
    if name not in PALETTE:
        raise ValueError(f"name must be one of {', '.join(PALETTE)}, got {name!r}")
    return PALETTE[name]


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    return fig, ax


def plot_accuracy(
    history: History,
    ax: Axes | None = None,
    *,
    label: str | None = None,
    color: str | None = None,
    aggregate: bool = True,
) -> Figure:
    """Test accuracy per round: after the server adjustment (solid) and, if
    ``aggregate``, the aggregation model before it (dashed, same colour)."""
    fig, ax = _axes(ax, (6, 3.5))
    name = f"{label}: " if label else ""
    (line,) = ax.plot(
        history.rounds, history.accuracy, color=color, label=f"{name}after adjustment"
    )
    if aggregate:
        ax.plot(
            history.rounds,
            history.aggregate_accuracy,
            color=line.get_color(),
            linestyle="--",
            alpha=0.7,
            label=f"{name}before adjustment",
        )
    ax.set(xlabel="round", ylabel="test accuracy", ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return fig


def plot_label_distribution(
    counts: np.ndarray, ax: Axes | None = None, *, max_devices: int = 50
) -> Figure:
    """Heatmap of samples per (device, class); ``counts``: (devices, classes)."""
    fig, ax = _axes(ax, (6, 3.5))
    shown = counts[:max_devices]
    image = ax.imshow(shown.T, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set(
        xlabel="device"
        if len(counts) <= max_devices
        else f"device (first {max_devices})",
        ylabel="class",
        yticks=range(counts.shape[1]),
    )
    fig.colorbar(image, ax=ax, label="samples")
    return fig


def plot_device_accuracy(accuracy: list[float], ax: Axes | None = None) -> Figure:
    """Histogram of the published model's accuracy on each device's own data."""
    fig, ax = _axes(ax, (5, 3))
    ax.hist(accuracy, bins=np.linspace(0, 1, 21), color="tab:blue", edgecolor="white")
    ax.axvline(float(np.mean(accuracy)), color="black", linestyle="--", label="mean")
    ax.set(xlabel="accuracy on the device's own data", ylabel="devices")
    ax.legend()
    return fig


def plot_accuracy_vs_time(
    history: History,
    ax: Axes | None = None,
    *,
    label: str | None = None,
    color: str | None = None,
) -> Figure:
    """Test accuracy against simulated time (see cost.py), one point per round."""
    fig, ax = _axes(ax, (6, 3.5))
    ax.plot(history.sim_time, history.accuracy, color=color, label=label)
    ax.set(xlabel="simulated time (s)", ylabel="test accuracy", ylim=(0, 1))
    ax.grid(alpha=0.3)
    if label:
        ax.legend(loc="lower right", fontsize="small")
    return fig


def plot_methods(
    results: Mapping[str, Sequence[History]],
    axes: Sequence[Axes] | None = None,
    *,
    target: float | None = None,
) -> Figure:
    """Accuracy of each method, averaged over its runs, against rounds (left) and
    simulated time (right); ``results`` maps a method name to its histories."""
    if axes is None:
        fig, axes = plt.subplots(
            1, 2, figsize=(11, 3.8), sharey=True, layout="constrained"
        )
    else:
        fig = axes[0].figure
    by_round, by_time = axes
    for name, runs in results.items():
        length = min(len(h) for h in runs)
        accuracy = np.mean([h.accuracy[:length] for h in runs], axis=0)
        sim_time = np.mean([h.sim_time[:length] for h in runs], axis=0)
        (line,) = by_round.plot(np.arange(1, length + 1), accuracy, label=name)
        by_time.plot(sim_time, accuracy, color=line.get_color(), label=name)
    by_round.set(xlabel="round", ylabel="test accuracy (mean over seeds)", ylim=(0, 1))
    by_time.set(xlabel="simulated time (s)")
    for ax in axes:
        if target is not None:
            ax.axhline(target, color="grey", linestyle=":", linewidth=1)
        ax.grid(alpha=0.3)
    by_time.legend(loc="lower right", fontsize="small")
    return fig


def plot_feddu(history: History, ax: Axes | None = None) -> Figure:
    """FedDU's alpha_t (left axis), tau_t and the server steps taken (right axis)."""
    fig, ax = _axes(ax, (6, 3.5))
    alpha = [np.nan if a is None else a for a in history.column("server_alpha")]
    tau = [np.nan if t is None else t for t in history.column("server_tau")]
    ax.plot(history.rounds, alpha, color="tab:purple", label="alpha_t")
    ax.set(xlabel="round", ylabel="alpha_t", ylim=(0, None))
    ax.grid(alpha=0.3)
    steps_ax = ax.twinx()
    steps_ax.step(history.rounds, tau, where="mid", color="tab:orange", label="tau_t")
    steps_ax.plot(
        history.rounds,
        history.column("server_steps"),
        "o",
        markersize=3,
        color="tab:orange",
        alpha=0.5,
        label="server steps taken",
    )
    steps_ax.set(ylabel="server steps", ylim=(0, None))
    lines = ax.get_legend_handles_labels()
    more = steps_ax.get_legend_handles_labels()
    handles, labels = (a + b for a, b in zip(lines, more, strict=True))
    ax.legend(handles, labels, loc="upper right", fontsize="small")
    return fig


def run_labels(configs: Sequence[FedConfig]) -> list[str]:
    """Short legend labels: the fields in which the configs differ (for one config,
    the fields it changes from the defaults), e.g. ``"server_steps=0"``."""
    if not configs:
        return []
    first = configs[0]
    varying = set().union(*(c.differences(first) for c in configs))
    if not varying:
        varying = set(first.differences(FedConfig()))
    names = [f.name for f in dataclasses.fields(FedConfig) if f.name in varying]
    return [
        ", ".join(f"{n}={_short(getattr(c, n))}" for n in names) or "defaults"
        for c in configs
    ]


def _short(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def plot_histories(
    histories: Mapping[str, History],
    ax: Axes | None = None,
    *,
    rounds: int | None = None,
) -> Figure:
    """Several runs on one axes, one colour each: test accuracy after the server
    adjustment (solid) and of the aggregation model before it (dashed, if different).

    ``rounds`` fixes the x-axis to 1..rounds, so a live run grows into a still frame.
    """
    fig, ax = _axes(ax, (6, 3.5))
    dashed = False
    for i, (label, history) in enumerate(histories.items()):
        color = f"C{i % 10}"  # fixed per position, so a redraw keeps each run's colour
        ax.plot(history.rounds, history.accuracy, color=color, marker=".", label=label)
        if history.aggregate_accuracy != history.accuracy:
            dashed = True
            ax.plot(
                history.rounds,
                history.aggregate_accuracy,
                color=color,
                linestyle="--",
                alpha=0.6,
            )
    ax.set(xlabel="round", ylabel="test accuracy", ylim=(0, 1))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if rounds is not None:
        ax.set_xlim(0.5, rounds + 0.5)
    ax.grid(alpha=0.3)
    if histories:
        ax.legend(
            loc="lower right",
            fontsize="small",
            title="solid: after adjustment, dashed: before" if dashed else None,
            title_fontsize="small",
        )
    return fig


def plot_round(
    local_accuracy: Sequence[float],
    aggregate_accuracy: float,
    accuracy: float,
    ax: Axes | None = None,
) -> Figure:
    """One round taken apart: test accuracy of each sampled device's local model, of
    their FedAvg aggregate, and of the aggregate after the server adjustment."""
    fig, ax = _axes(ax, (6, 3.5))
    devices = range(len(local_accuracy))
    ax.bar(devices, local_accuracy, color="tab:gray", label="local models")
    ax.axhline(aggregate_accuracy, color="tab:blue", linestyle="--", label="aggregate")
    ax.axhline(accuracy, color="tab:blue", label="after adjustment")
    ax.set(xlabel="sampled device", ylabel="test accuracy", ylim=(0, 1), xticks=devices)
    ax.legend(loc="lower center", ncols=3, fontsize="small")
    return fig


# --- Lesson 05, the dynamic server update (FedDU): why FedDU's steps fall -----------


def _label_for_projector(ax: Axes, *, title: str, xlabel: str, ylabel: str) -> None:
    """Title, axis labels and ticks at sizes a projected slide shows (>= 11 pt)."""
    ax.set_title(title, fontsize=13)
    ax.set_xlabel(xlabel, fontsize=12)
    ax.set_ylabel(ylabel, fontsize=12)
    ax.tick_params(labelsize=11)
    ax.grid(alpha=0.3)


def _run_label(name: str, history: History) -> str:
    """The method's plain name; a fixed schedule's with its steps ("fixed: 5 steps")."""
    if name == "fixed" and len(history):
        return f"fixed: {history[0].server_steps} steps"
    return METHOD_NAMES[name]


def _floats(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def feddu_factors(
    history: History, *, num_shared: int, decay: float
) -> dict[str, np.ndarray]:
    """FedDU's alpha_t per round (``"alpha"``) and the three factors it is the product
    of (:mod:`fedlearn_lab.feddu`): ``"error"`` 1 - acc_t, ``"balance"``
    n0 D(P't) / (n0 D(P't) + n't D(P0)) and ``"decay"`` decay^(t-1).

    A record keeps alpha_t, D(P0), D(P't) and n't (``num_samples``), so the balance
    and the decay are recomputed and 1 - acc_t is what is left of alpha_t; it is NaN
    where the balance is 0 or unknown (a round in which no update was aggregated).
    ``num_shared`` is n0, ``decay`` the run's ``server_decay``.
    """
    alpha = history.column("server_alpha")
    if not alpha or None in alpha:
        raise ValueError(
            "history must hold rounds of a run with server_schedule='feddu' "
            "(server_alpha set in every record)"
        )
    if num_shared < 1:
        raise ValueError(f"num_shared must be an integer >= 1, got {num_shared!r}")
    if not 0 < decay <= 1:
        raise ValueError(f"decay must be in (0, 1], got {decay!r}")
    shared_part = num_shared * _floats(history.column("sampled_label_divergence"))
    total = shared_part + np.multiply(
        history.column("num_samples"),
        _floats(history.column("shared_label_divergence")),
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        balance = np.where(total > 0, shared_part / total, np.nan)
        decayed = decay ** (np.asarray(history.rounds, dtype=float) - 1)
        error = np.asarray(alpha, dtype=float) / (balance * decayed)
    error[~(balance > 0)] = np.nan
    return {
        "alpha": np.asarray(alpha, dtype=float),
        "error": error,
        "balance": balance,
        "decay": decayed,
    }


def plot_feddu_factors(
    history: History, ax: Axes | None = None, *, num_shared: int, decay: float
) -> Figure:
    """FedDU's alpha_t per round (FedDU's colour) over the three factors it is the
    product of (greys, see :func:`feddu_factors`): which one makes it fall."""
    fig, ax = _axes(ax, (6, 4))
    parts = feddu_factors(history, num_shared=num_shared, decay=decay)
    rounds = history.rounds
    factors = (
        ("error", r"$1 - \mathrm{acc}_t$ (error on the shared dataset)", "-", "0.35"),
        ("balance", r"balance $n_0 D(P'_t) / (n_0 D(P'_t) + n'_t D(P_0))$", ":", "0.5"),
        ("decay", r"$\mathrm{decay}^{t-1}$", "--", "0.6"),
    )
    for key, label, style, grey in factors:
        ax.plot(rounds, parts[key], style, color=grey, linewidth=2, label=label)
    ax.plot(
        rounds,
        parts["alpha"],
        color=method_color("feddu"),
        linewidth=3,
        marker="o",
        markersize=4,
        label=r"$\alpha_t$, their product",
    )
    ax.set_ylim(0, 1.6)  # room for the legend above the factors, which are <= 1
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _label_for_projector(
        ax,
        title=r"Why $\alpha_t$ falls",
        xlabel="round",
        ylabel=r"factor of $\alpha_t$",
    )
    ax.legend(loc="upper right", fontsize=11)
    return fig


def plot_server_steps(
    histories: Mapping[str, History], ax: Axes | None = None
) -> Figure:
    """Server steps taken in each round, one line per :data:`PALETTE` method name
    (FedDU's tau_t, the fixed schedule's ``server_steps``, plain FedAvg's 0)."""
    fig, ax = _axes(ax, (6, 4))
    most = 0
    for name, history in histories.items():
        steps = history.column("server_steps")
        most = max([most, *steps])
        ax.step(
            history.rounds,
            steps,
            where="mid",
            color=method_color(name),
            linewidth=2.5,
            label=_run_label(name, history),
        )
    ax.set_ylim(-0.3, 1.5 * most + 1)  # room for the legend
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    _label_for_projector(
        ax, title="Server steps per round", xlabel="round", ylabel="server steps"
    )
    ax.legend(loc="upper right", fontsize=11)
    return fig


def plot_adjustment_change(
    results: Mapping[str, Sequence[History]], ax: Axes | None = None
) -> Figure:
    """Test accuracy after minus before the server adjustment in each round, the mean
    over each method's runs (:data:`PALETTE` colours): below 0 the adjustment hurts."""
    fig, ax = _axes(ax, (6, 4))
    ax.axhline(0, color="0.6", linewidth=1)
    for name, runs in results.items():
        length = min(len(h) for h in runs)
        change = np.mean(
            [np.subtract(h.accuracy, h.aggregate_accuracy)[:length] for h in runs],
            axis=0,
        )
        ax.plot(
            np.arange(1, length + 1),
            change,
            color=method_color(name),
            linewidth=2.5,
            label=_run_label(name, runs[0]),
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _label_for_projector(
        ax,
        title="What the server adjustment changes",
        xlabel="round",
        ylabel="accuracy after − before",
    )
    ax.legend(loc="upper right", fontsize=11)
    return fig


# --- Lesson 06, faults and attacks: why robust aggregators help ---------------------

# The aggregators of fedlearn_lab.aggregation.AGGREGATORS in RUN_COLORS: the mean is
# plain FedAvg's black; the server adjustment's vermillion is left out.
AGGREGATOR_COLORS: dict[str, str] = {
    "fedavg": PALETTE["fedavg"],
    "median": RUN_COLORS[2],
    "trimmed_mean": RUN_COLORS[3],
    "krum": RUN_COLORS[5],
}
AGGREGATOR_NAMES: dict[str, str] = {
    "fedavg": "FedAvg (mean)",
    "median": "median",
    "trimmed_mean": "trimmed mean",
    "krum": "Krum",
}
MALICIOUS_COLOR = RUN_COLORS[7]  # wine: a malicious device's point


def plot_coordinate(
    values: Sequence[float],
    malicious: Sequence[bool],
    aggregates: Mapping[str, float],
    ax: Axes | None = None,
    *,
    honest_mean: float | None = None,
) -> Figure:
    """One weight's value from every device in one round (honest grey dots, malicious
    wine crosses, sorted), and where each aggregator puts it (vertical lines in
    :data:`AGGREGATOR_COLORS`); ``honest_mean`` draws the honest devices' FedAvg."""
    values = np.asarray(values, dtype=float)
    bad = np.asarray(malicious, dtype=bool)
    if values.ndim != 1 or bad.shape != values.shape:
        raise ValueError(
            f"values and malicious must be 1-D of one length, got shapes "
            f"{values.shape} and {bad.shape}"
        )
    fig, ax = _axes(ax, (6, 4))
    rank = np.empty(len(values), dtype=int)
    rank[np.argsort(values, kind="stable")] = np.arange(len(values))
    ax.scatter(values[~bad], rank[~bad], s=70, color="0.45", label="honest device")
    ax.scatter(
        values[bad],
        rank[bad],
        s=110,
        marker="X",
        color=MALICIOUS_COLOR,
        label="malicious device",
    )
    if honest_mean is not None:
        ax.axvline(
            honest_mean, color="0.6", linestyle="--", linewidth=2, label="honest FedAvg"
        )
    styles = ("-", "--", ":", "-.")  # rules that land close together stay visible
    for k, (name, value) in enumerate(aggregates.items()):
        ax.axvline(
            value,
            color=AGGREGATOR_COLORS[name],
            linestyle=styles[k % len(styles)],
            linewidth=3,
            label=AGGREGATOR_NAMES[name],
        )
    ax.set_yticks([])
    _label_for_projector(
        ax,
        title="One weight, one round",
        xlabel=r"the weight's change $w_k - w_t$",
        ylabel="devices, sorted",
    )
    ax.legend(loc="upper left", fontsize=11)
    return fig


def plot_attack_sweep(
    fractions: Sequence[float],
    accuracy: Mapping[str, Sequence[float]],
    ax: Axes | None = None,
) -> Figure:
    """Accuracy of each aggregator (:data:`AGGREGATOR_COLORS`) against the share of
    malicious devices; ``accuracy[name][i]`` belongs to ``fractions[i]``."""
    fig, ax = _axes(ax, (6, 4))
    percent = 100 * np.asarray(fractions, dtype=float)
    for name, values in accuracy.items():
        if len(values) != len(percent):
            raise ValueError(
                f"accuracy[{name!r}] must have one value per fraction "
                f"({len(percent)}), got {len(values)}"
            )
        ax.plot(
            percent,
            values,
            marker="o",
            markersize=7,
            linewidth=2.5,
            color=AGGREGATOR_COLORS[name],
            label=AGGREGATOR_NAMES[name],
        )
    ax.set_ylim(0, 1)
    _label_for_projector(
        ax,
        title="Accuracy under attack",
        xlabel="malicious devices (%)",
        ylabel="test accuracy",
    )
    ax.legend(loc="lower left", fontsize=11)
    return fig
