"""Figures from records. Matplotlib only: each function takes ``ax=None`` and returns
the Figure; nothing here calls ``show()``."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

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
            label=f"{name}before adjustment",
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
