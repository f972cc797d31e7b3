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
from .methods import inactive_settings, method_of
from .weights import Weights

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
    """The palette colour of a :data:`fedlearn_lab.METHODS` name; a combination
    (``"fedprox+fixed"``) takes its first part's colour (lessons dash its line)."""
    first = name.split("+")[0]
    if first not in PALETTE:
        raise ValueError(f"name must be one of {', '.join(PALETTE)}, got {name!r}")
    return PALETTE[first]


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


# --- Lesson 03 (the server adjustment): class by class, and over seeds ---------------


def class_accuracy(y_true: object, y_pred: object, num_classes: int) -> np.ndarray:
    """Accuracy on each class (the share of its samples predicted as that class, i.e.
    its recall), shape (num_classes,); NaN for a class without samples."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer):
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    labels, predicted = np.asarray(y_true), np.asarray(y_pred)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"y_true must be a 1-D integer array, got {labels.dtype} "
            f"of shape {labels.shape}"
        )
    if predicted.shape != labels.shape:
        raise ValueError(
            f"y_pred must have the shape of y_true {labels.shape}, got "
            f"{predicted.shape}"
        )
    if len(labels) and not 0 <= labels.min() <= labels.max() < num_classes:
        raise ValueError(
            f"y_true must lie in [0, {num_classes - 1}], got values in "
            f"[{labels.min()}, {labels.max()}]"
        )
    right = np.bincount(labels[predicted == labels], minlength=num_classes)
    total = np.bincount(labels, minlength=num_classes)
    with np.errstate(invalid="ignore"):
        return right / total  # (num_classes,)


def plot_adjustment_by_class(
    sampled_share: object,
    before: object,
    after: object,
    axes: Sequence[Axes] | None = None,
    *,
    shared_share: object = None,
) -> Figure:
    """One round, class by class: the label shares of the round's sampled devices
    (left; the shared dataset's as dots) and each class's test accuracy before the
    server adjustment (the aggregation model, black) and after it (vermillion)."""
    given = {"sampled_share": sampled_share, "before": before, "after": after}
    if shared_share is not None:
        given["shared_share"] = shared_share
    values = {name: np.asarray(v, dtype=float) for name, v in given.items()}
    shapes = {name: v.shape for name, v in values.items()}
    if len(shapes["before"]) != 1 or len(set(shapes.values())) > 1:
        raise ValueError(
            f"{', '.join(shapes)} must be 1-D with one value per class, got {shapes}"
        )
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    shares, accuracy = axes
    classes = np.arange(len(values["before"]))
    shares.bar(
        classes, values["sampled_share"], color="tab:gray", label="sampled devices"
    )
    if "shared_share" in values:
        shares.plot(
            classes,
            values["shared_share"],
            "o",
            color=PALETTE["fixed"],
            label="shared dataset",
        )
    top = max(float(np.nanmax(v)) for k, v in values.items() if k.endswith("share"))
    shares.set(xlabel="class", ylabel="share of the labels", xticks=classes)
    shares.set(ylim=(0, 1.35 * top if top > 0 else 1))  # room for the legend
    shares.set_title("the round's labels")
    for offset, name, color, label in [
        (-0.2, "before", PALETTE["fedavg"], "before (aggregation)"),
        (0.2, "after", PALETTE["fixed"], "after (adjusted)"),
    ]:
        accuracy.bar(classes + offset, values[name], 0.4, color=color, label=label)
    accuracy.set(xlabel="class", ylabel="test accuracy", ylim=(0, 1.25))
    accuracy.set(xticks=classes, yticks=np.linspace(0, 1, 6))
    accuracy.set_title("accuracy on each class")
    for ax in axes:
        ax.grid(axis="y", alpha=0.3)
        ax.legend(loc="upper center", ncols=2, handlelength=1, columnspacing=1)
    return shares.figure


def plot_over_seeds(
    series: Mapping[str, Mapping[float, Sequence[float]]],
    ax: Axes | None = None,
    *,
    colors: Mapping[str, str] | None = None,
    xlabel: str = "",
    ylabel: str = "",
) -> Figure:
    """One dot per seed and a bar for the mean ± standard deviation, for every x
    value (a category, e.g. ``shared_fraction``) of every series (side by side)."""
    if not series:
        raise ValueError("series must name at least one series")
    fig, ax = _axes(ax, (6, 4))
    xs = sorted({x for values in series.values() for x in values})
    offsets = np.linspace(-0.15, 0.15, len(series)) if len(series) > 1 else [0.0]
    for i, (name, values) in enumerate(series.items()):
        color = (colors or {}).get(name, RUN_COLORS[i % len(RUN_COLORS)])
        for j, x in enumerate(xs):
            runs = np.asarray(values.get(x, []), dtype=float)
            if len(runs) == 0:
                continue
            where = j + offsets[i]
            ax.plot(np.full(len(runs), where), runs, "o", color=color, alpha=0.45)
            spread = runs.std(ddof=1) if len(runs) > 1 else 0.0
            ax.errorbar(
                where + 0.06,
                runs.mean(),
                yerr=spread,
                fmt="_",
                markersize=14,
                capsize=5,
                color=color,
                label=name if j == 0 else None,
            )
    ax.set(xticks=range(len(xs)), xticklabels=[f"{x:g}" for x in xs])
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="best", title="dots: seeds, bars: mean ± sd")
    return fig


# --- Lessons 01 (one round: weight space, per-class accuracy) and 02 (label skew) ---

_GREY = "#999999"  # the devices themselves, in every lesson figure below


def _readable(ax: Axes, size: float = 12) -> None:
    """Axis labels at ``size`` points and tick labels one point smaller (projector)."""
    ax.xaxis.label.set_fontsize(size)
    ax.yaxis.label.set_fontsize(size)
    ax.tick_params(labelsize=size - 1)


def _flat(weights: Weights) -> np.ndarray:
    """Stacked weights as one float64 row per model, shape (rows, parameters)."""
    rows = [v.detach().double().flatten(1).numpy() for v in weights.values()]
    if not rows or rows[0].shape[0] == 0:
        raise ValueError("weights must hold at least one stacked model (row)")
    return np.concatenate(rows, axis=1)


def round_plane(
    device_weights: Weights, models: Sequence[Weights]
) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates of the devices (stacked ``device_weights``) and of ``models`` on a
    plane through the devices' mean, shapes (devices, 2) and (models, 2).

    Direction 1 is the devices' first principal component (the way they spread most),
    sign fixed so that its largest entry is positive. Direction 2 is the move from the
    last-but-one model to the last (e.g. the server adjustment) made orthogonal to
    direction 1, pointing along the move, so that move is drawn at its true length.
    With a single model, or no move, direction 2 is the devices' second principal
    component. Being linear, the plane keeps any weighted mean a weighted mean.
    """
    if not models or any(m.keys() != device_weights.keys() for m in models):
        raise ValueError(
            "models must hold at least one model, with the device weights' keys"
        )
    devices = _flat(device_weights)  # (devices, parameters)
    points = np.concatenate(
        [_flat({k: v[None] for k, v in m.items()}) for m in models]
    )  # (models, parameters)
    mean = devices.mean(axis=0)
    _, _, vt = np.linalg.svd(devices - mean, full_matrices=False)
    basis = np.zeros((2, devices.shape[1]))
    basis[: min(2, len(vt))] = vt[:2]
    basis[0] *= np.sign(basis[0][np.abs(basis[0]).argmax()]) or 1.0
    move = points[-1] - points[-2] if len(points) > 1 else np.zeros(len(mean))
    move = move - (move @ basis[0]) * basis[0]
    if np.linalg.norm(move) > 1e-12 * max(1.0, np.linalg.norm(mean)):
        basis[1] = move / np.linalg.norm(move)
    return (devices - mean) @ basis.T, (points - mean) @ basis.T


def plot_round_weights(
    device_weights: Weights,
    counts: Sequence[int],
    models: Mapping[str, Weights],
    ax: Axes | None = None,
    *,
    colors: Mapping[str, str] | None = None,
) -> Figure:
    """One round in weight space, on the plane of :func:`round_plane`.

    ``device_weights`` (stacked) are the sampled devices' updates: grey dots of area
    proportional to ``counts``, each joined by a thin line to the first of
    ``models`` (the global model they started from). The named ``models`` follow as
    diamonds joined by arrows in their order, e.g. before the round, the FedAvg
    average, after the server adjustment; ``colors`` maps their names to colours.
    """
    num_devices = len(_flat(device_weights))
    if len(counts) != num_devices:
        raise ValueError(
            f"counts must give one sample count per device ({num_devices}), "
            f"got {len(counts)}"
        )
    if not models:
        raise ValueError("models must name at least one model (the global model)")
    devices, named = round_plane(device_weights, list(models.values()))
    fig, ax = _axes(ax, (5.5, 4.5))
    for x, y in devices:
        ax.plot([named[0, 0], x], [named[0, 1], y], color="#CCCCCC", lw=1, zorder=1)
    area = 400 * np.asarray(counts, dtype=float) / max(max(counts), 1)
    ax.scatter(*devices.T, s=area, color=_GREY, edgecolor="white", zorder=2)
    ax.scatter([], [], s=80, color=_GREY, label="sampled devices (area: samples)")
    colors = colors or {}
    for i, name in enumerate(models):
        color = colors.get(name, RUN_COLORS[i % len(RUN_COLORS)])
        if i > 0:
            arrow = {"arrowstyle": "-|>", "color": color, "lw": 2, "shrinkB": 6}
            ax.annotate("", xy=named[i], xytext=named[i - 1], arrowprops=arrow)
        ax.scatter(
            *named[i],
            s=150,
            marker="D",
            color=color,
            edgecolor="black",
            label=name,
            zorder=4,
        )
    ylabel = "devices' second direction of spread"
    if len(models) > 1:
        ylabel = f"direction of the last move ({list(models)[-1]})"
    ax.set(xlabel="devices' main direction of spread", ylabel=ylabel)
    ax.grid(alpha=0.3)
    low, high = ax.get_ylim()
    ax.set_ylim(low, high + 0.5 * (high - low))  # headroom for the legend
    ax.legend(loc="upper left", fontsize=11, framealpha=0.9)
    _readable(ax)
    return fig


def plot_class_accuracy(
    accuracy: Mapping[str, Sequence[float]],
    ax: Axes | None = None,
    *,
    counts: Sequence[int] | None = None,
    colors: Mapping[str, str] | None = None,
) -> Figure:
    """Accuracy on each class (:func:`class_accuracy`) of several named models, as
    grouped bars; ``counts`` (e.g. the round's training samples of each class) are
    written under the class labels."""
    if not accuracy:
        raise ValueError("accuracy must name at least one model")
    num_classes = len(next(iter(accuracy.values())))
    if counts is not None and len(counts) != num_classes:
        raise ValueError(
            f"counts must give one number per class ({num_classes}), got {len(counts)}"
        )
    fig, ax = _axes(ax, (6, 4))
    classes = np.arange(num_classes)
    width = 0.8 / len(accuracy)
    colors = colors or {}
    for i, (name, values) in enumerate(accuracy.items()):
        color = colors.get(name, RUN_COLORS[i % len(RUN_COLORS)])
        offset = (i - (len(accuracy) - 1) / 2) * width
        ax.bar(classes + offset, values, width, color=color, label=name)
    labels = [str(c) for c in classes]
    xlabel = "class"
    if counts is not None:
        labels = [f"{c}\n{n}" for c, n in zip(classes, counts, strict=True)]
        xlabel = "class, and its training samples in this round"
    ax.set(xlabel=xlabel, ylabel="test accuracy on the class", ylim=(0, 1.3))
    ax.set_xticks(classes, labels)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper center", ncols=len(accuracy), fontsize=11, frameon=False)
    _readable(ax)
    return fig


def plot_label_heatmaps(
    counts: Mapping[str, np.ndarray],
    axes: Sequence[Axes] | None = None,
    *,
    max_devices: int = 50,
    share: bool = False,
) -> Figure:
    """Samples per (class, device) of several partitions, titled by name, on ONE
    colour scale with one colour bar, so equal colours mean equal numbers in every
    panel; ``counts``: name -> (devices, classes). The scale runs from 0 to the
    largest count of all, or with ``share`` from 0 to 1 in shares of the device's
    samples."""
    if not counts:
        raise ValueError("counts must name at least one partition")
    if axes is None:
        rows = -(-len(counts) // 2)
        fig, grid = plt.subplots(
            rows, 2, figsize=(11, 0.5 + 2.8 * rows), layout="constrained", squeeze=False
        )
        axes = list(grid.flat)
        for extra in axes[len(counts) :]:
            extra.set_visible(False)
    if len(axes) < len(counts):
        raise ValueError(f"axes must hold {len(counts)} axes, got {len(axes)}")
    fig = axes[0].figure
    if share:
        counts = {
            n: c / np.maximum(c.sum(1, keepdims=True), 1) for n, c in counts.items()
        }
    vmax = 1.0 if share else max(float(c.max()) for c in counts.values())
    for ax, (name, c) in zip(axes, counts.items(), strict=False):
        image = ax.imshow(
            c[:max_devices].T,
            aspect="auto",
            cmap="viridis",
            interpolation="nearest",
            vmin=0,
            vmax=vmax,
        )
        shown = "device" if len(c) <= max_devices else f"device (first {max_devices})"
        ax.set(xlabel=shown, ylabel="class", yticks=range(c.shape[1]))
        ax.set_title(name, fontsize=13)
        _readable(ax)
    bar = fig.colorbar(image, ax=list(axes[: len(counts)]), shrink=0.9)
    what = "share of the device's samples" if share else "samples on the device"
    bar.set_label(f"{what} in the class", fontsize=12)
    bar.ax.tick_params(labelsize=11)
    return fig


def plot_skew_cost(
    label_divergence: Mapping[str, Sequence[float]],
    accuracy: Mapping[str, float],
    axes: Sequence[Axes] | None = None,
    *,
    color: str = PALETTE["fedavg"],
) -> Figure:
    """What label skew costs plain FedAvg, one row per partition, rows sorted by their
    mean label divergence. Left: each device's label divergence from the label
    distribution of all the devices' data (a dot per device, a bar at the mean).
    Right, on the same rows: the final test accuracy of that partition's run."""
    if set(label_divergence) != set(accuracy) or not accuracy:
        raise ValueError(
            "label_divergence and accuracy must name the same partitions, got "
            f"{list(label_divergence)} and {list(accuracy)}"
        )
    if axes is None:
        fig, axes = plt.subplots(
            1, 2, figsize=(11, 4.5), sharey=True, layout="constrained"
        )
    fig = axes[0].figure
    spread, cost = axes
    means = {name: float(np.mean(v)) for name, v in label_divergence.items()}
    names = sorted(means, key=means.get)
    for row, name in enumerate(names):
        values = np.asarray(label_divergence[name], dtype=float)
        jitter = ((np.arange(len(values)) * 0.618) % 1 - 0.5) * 0.5  # no randomness
        spread.scatter(values, row + jitter, s=14, color=_GREY, alpha=0.8)
        spread.plot([means[name]] * 2, [row - 0.35, row + 0.35], color=color, lw=3)
        cost.barh(row, accuracy[name], height=0.6, color=color)
        cost.text(
            accuracy[name] + 0.01,
            row,
            f"{accuracy[name]:.2f}",
            va="center",
            fontsize=11,
        )
    spread.set(
        yticks=range(len(names)),
        xlabel="label divergence of a device (JS, bits)",
        xlim=(0, 1),
        ylim=(len(names) - 0.5, -0.5),
    )
    spread.set_yticklabels(names)
    spread.set_title("each device (dot) and their mean (bar)", fontsize=13)
    cost.set(xlabel="final test accuracy", xlim=(0, 1.1))
    cost.set_xticks(np.linspace(0, 1, 6))
    cost.set_title("plain FedAvg on that split", fontsize=13)
    for ax in axes:
        ax.grid(axis="x", alpha=0.3)
        _readable(ax)
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
