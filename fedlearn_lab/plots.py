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

from . import inactive_settings, method_of
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
# Fields that say which method a config is: a run label names the method instead.
_METHOD_FIELDS = {"shared_use", "server_schedule", "server_steps"}


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
    ``aggregate``, the aggregation model before it (dashed).

    Without ``color`` the two curves take the palette's colours of the server
    adjustment and of plain FedAvg; with it, both take ``color``.
    """
    fig, ax = _axes(ax, (6, 3.5))
    name = f"{label}: " if label else ""
    ax.plot(
        history.rounds,
        history.accuracy,
        color=color or PALETTE["fixed"],
        label=f"{name}after adjustment",
    )
    if aggregate:
        ax.plot(
            history.rounds,
            history.aggregate_accuracy,
            color=color or PALETTE["fedavg"],
            linestyle="--",
            alpha=0.7,
            label=f"{name}before adjustment",
        )
    ax.set(xlabel="round", ylabel="test accuracy", ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return fig


def plot_label_distribution(
    counts: np.ndarray,
    ax: Axes | None = None,
    *,
    max_devices: int = 50,
    cax: Axes | None = None,
) -> Figure:
    """Heatmap of samples per (device, class); ``counts``: (devices, classes).

    ``cax`` places the colour bar in those axes instead of taking room from ``ax``.
    """
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
    fig.colorbar(image, ax=None if cax else ax, cax=cax, label="samples")
    return fig


def plot_device_accuracy(
    accuracy: list[float], ax: Axes | None = None, *, color: str | None = None
) -> Figure:
    """Histogram of the published model's accuracy on each device's own data."""
    fig, ax = _axes(ax, (5, 3))
    ax.hist(
        accuracy,
        bins=np.linspace(0, 1, 21),
        color=color or PALETTE["fixed"],
        edgecolor="white",
    )
    ax.axvline(float(np.mean(accuracy)), color="black", linestyle="--", label="mean")
    ax.set(xlabel="accuracy on the device's own data", ylabel="devices")
    ax.legend()
    return fig


def plot_device_strip(
    accuracy: Mapping[str, Sequence[float]],
    ax: Axes | None = None,
    *,
    colors: Mapping[str, str] | None = None,
    max_devices: int = 50,
) -> Figure:
    """The published model's accuracy on each device's own data, one column per
    device in the order of :func:`plot_label_distribution` (bars for the first run,
    a tick per device for the others)."""
    fig, ax = _axes(ax, (6, 2))
    for i, (label, values) in enumerate(accuracy.items()):
        shown = np.asarray(values, dtype=float)[:max_devices]
        devices = np.arange(len(shown))
        color = (colors or {}).get(label, RUN_COLORS[i % len(RUN_COLORS)])
        if i == 0:
            ax.bar(devices, shown, width=0.8, color=color, label=label)
        else:
            ax.plot(devices, shown, "_", markersize=7, mew=2, color=color, label=label)
    num = max((min(len(v), max_devices) for v in accuracy.values()), default=1)
    ax.set(xlim=(-0.5, num - 0.5), ylim=(0, 1), xlabel="device", ylabel="accuracy")
    ax.grid(axis="y", alpha=0.3)
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
    simulated time (right); ``results`` maps a method name to its histories (a name
    of :data:`PALETTE` gets its colour)."""
    if axes is None:
        fig, axes = plt.subplots(
            1, 2, figsize=(11, 3.8), sharey=True, layout="constrained"
        )
    else:
        fig = axes[0].figure
    by_round, by_time = axes
    spare = iter(c for c in RUN_COLORS if c not in {PALETTE.get(n) for n in results})
    for name, runs in results.items():
        color = PALETTE.get(name) or next(spare, None)
        length = min(len(h) for h in runs)
        accuracy = np.mean([h.accuracy[:length] for h in runs], axis=0)
        sim_time = np.mean([h.sim_time[:length] for h in runs], axis=0)
        by_round.plot(np.arange(1, length + 1), accuracy, color=color, label=name)
        by_time.plot(sim_time, accuracy, color=color, label=name)
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


def method_name(cfg: FedConfig) -> str:
    """The method of ``cfg`` in plain words: "plain FedAvg", "FedDU",
    "server_steps=10" (the server adjustment, named by its steps), ..."""
    method = method_of(cfg)
    if method == "fixed":
        return f"server_steps={cfg.server_steps}"
    return METHOD_NAMES.get(method, method)


def run_labels(configs: Sequence[FedConfig]) -> list[str]:
    """Short labels for runs: the method when the methods differ, then the other
    fields in which the configs differ (for one config, the fields it changes from
    the defaults), e.g. ``"plain FedAvg, seed=3"``; a field a run ignores is left
    out of its label."""
    if not configs:
        return []
    methods = [method_name(c) for c in configs]
    first = configs[0]
    varying = set().union(*(c.differences(first) for c in configs)) - _METHOD_FIELDS
    named = len(set(methods)) > 1
    if not varying and not named:  # one config, or all alike
        named = True
        varying = set(first.differences(FedConfig())) - _METHOD_FIELDS
    names = [f.name for f in dataclasses.fields(FedConfig) if f.name in varying]
    labels, seen = [], {}
    for cfg, method in zip(configs, methods, strict=True):
        ignored = inactive_settings(cfg)
        parts = [method] if named else []
        parts += [f"{n}={_short(getattr(cfg, n))}" for n in names if n not in ignored]
        label = ", ".join(parts) or method
        seen[label] = seen.get(label, 0) + 1  # alike but for ignored fields: number
        labels.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return labels


def _short(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def plot_histories(
    histories: Mapping[str, History],
    ax: Axes | None = None,
    *,
    rounds: int | None = None,
    colors: Mapping[str, str] | None = None,
    legend: bool = True,
) -> Figure:
    """Several runs on one axes, one colour each: test accuracy after the server
    adjustment (solid) and of the aggregation model before it (dashed, if different).

    ``rounds`` fixes the x-axis to 1..rounds, so a live run grows into a still frame.
    ``colors`` maps labels to colours (default: :data:`RUN_COLORS` in order). The
    legend sits in the corner for up to four runs and below the axes for more, so
    it never covers the curves; ``legend=False`` leaves it out.
    """
    own_figure = ax is None
    fig, ax = _axes(ax, (6, 3.5))
    dashed = False
    for i, (label, history) in enumerate(histories.items()):
        color = (colors or {}).get(label, RUN_COLORS[i % len(RUN_COLORS)])
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
    if histories and legend:
        title = "solid: after adjustment, dashed: before" if dashed else None
        if len(histories) <= 4:
            ax.legend(
                loc="lower right",
                fontsize="small",
                title=title,
                title_fontsize="small",
            )
        else:  # below the axes, in as many columns as the figure's width holds
            longest = max(len(label) for label in histories)
            entry = 4 + 0.55 * longest  # in font sizes: the line, then the text
            size = plt.rcParams["font.size"] * 0.83  # points, "small"
            ncols = int(max(1, min(4, fig.get_figwidth() * 72 / size // entry)))
            if own_figure:  # make room for the legend's rows rather than squeeze
                rows = -(-len(histories) // ncols)
                fig.set_figheight(fig.get_figheight() + rows * 1.4 * size / 72)
            ax.legend(
                loc="upper center",
                bbox_to_anchor=(0.5, -0.18),
                ncols=ncols,
                fontsize="small",
                title=title,
                title_fontsize="small",
                frameon=False,
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
    ax.axhline(
        aggregate_accuracy, color=PALETTE["fedavg"], linestyle="--", label="aggregate"
    )
    ax.axhline(accuracy, color=PALETTE["fixed"], label="after adjustment")
    ax.set(xlabel="sampled device", ylabel="test accuracy", ylim=(0, 1), xticks=devices)
    ax.legend(loc="lower center", ncols=3, fontsize="small")
    return fig
