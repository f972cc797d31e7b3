"""Figures from records. Matplotlib only: each function takes ``ax=None`` and returns
the Figure; nothing here calls ``show()``."""

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
    (line,) = ax.plot(history.rounds, history.accuracy, color=color, label=f"{name}after adjustment")
    if aggregate:
        ax.plot(
            history.rounds,
            history.aggregate_accuracy,
            color=line.get_color(),
            linestyle="--",
            alpha=0.7,
            label=f"{name}before (FedAvg aggregate)",
        )
    ax.set(xlabel="round", ylabel="test accuracy", ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return fig


def plot_label_distribution(
    counts: np.ndarray, ax: Axes | None = None, *, max_devices: int = 50
) -> Figure:
    """Heatmap of samples per (device, class); ``counts`` has shape (devices, classes)."""
    fig, ax = _axes(ax, (6, 3.5))
    shown = counts[:max_devices]
    image = ax.imshow(shown.T, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set(
        xlabel="device" if len(counts) <= max_devices else f"device (first {max_devices})",
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
