"""The figures every lesson and the playground share: one palette, readable legends,
runs named in plain words."""

from __future__ import annotations

import itertools

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.colors import to_hex, to_rgb

import fedlearn_lab as fl
from fedlearn_lab import plots

# Methods another engineer is adding: their colours are reserved already.
COMING = ("fedprox", "scaffold", "fedadam", "fedyogi", "fedadagrad")
# Machado, Oliveira & Fernandes 2009, severity 1, on linear RGB: how the colours
# look to someone with deuteranopia or protanopia.
SIMULATE = {
    "deuteranopia": np.array(
        [
            [0.367322, 0.860646, -0.227968],
            [0.280085, 0.672501, 0.047413],
            [-0.011820, 0.042940, 0.968881],
        ]
    ),  # fmt: skip
    "protanopia": np.array(
        [
            [0.152286, 1.052583, -0.204868],
            [0.114503, 0.786281, 0.099216],
            [-0.003882, -0.048116, 1.051998],
        ]
    ),  # fmt: skip
}


def _linear(color: str) -> np.ndarray:
    rgb = np.array(to_rgb(color))
    return np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)


def _lab(linear: np.ndarray) -> np.ndarray:
    """CIE L*a*b* (D65) of a linear-RGB colour."""
    xyz = np.array(
        [[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]
    ) @ np.clip(linear, 0, 1)
    f = np.cbrt(xyz / [0.95047, 1.0, 1.08883])
    f = np.where(xyz / [0.95047, 1.0, 1.08883] > 0.008856, f, 7.787 * xyz + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def _closest_pair(colors, vision=None) -> float:
    """The smallest CIE76 colour difference between two of ``colors``."""
    look = SIMULATE.get(vision, np.eye(3))
    labs = [_lab(look @ _linear(c)) for c in colors]
    return min(np.linalg.norm(a - b) for a, b in itertools.combinations(labs, 2))


def test_palette_names_every_method_with_distinct_colour_blind_safe_colours():
    single = {name for name in fl.METHODS if "+" not in name}
    assert single | set(COMING) == set(plots.PALETTE)
    combined = [name for name in fl.METHODS if "+" in name]
    assert combined and all(plots.method_color(name) for name in combined)
    assert plots.method_color("scaffold+fixed") == plots.PALETTE["scaffold"]
    assert plots.RUN_COLORS[:2] == [plots.PALETTE["fedavg"], plots.PALETTE["fixed"]]
    assert sorted(plots.RUN_COLORS) == sorted(set(plots.PALETTE.values()))
    assert _closest_pair(plots.RUN_COLORS) > 25
    for vision in SIMULATE:
        assert _closest_pair(plots.RUN_COLORS, vision) > 15, vision
    assert plots.method_color("feddu") == plots.PALETTE["feddu"]
    with pytest.raises(ValueError, match="name must be one of"):
        plots.method_color("fedsgd")


def _history(accuracy, aggregate=None) -> fl.History:
    history = fl.History()
    for t, acc in enumerate(accuracy, start=1):
        history.append(
            fl.RoundRecord(
                round=t,
                devices=(0,),
                num_samples=1,
                train_loss=1.0,
                aggregate_accuracy=acc if aggregate is None else aggregate[t - 1],
                aggregate_loss=1.0,
                accuracy=acc,
                loss=1.0,
                server_steps=0,
                server_loss=float("nan"),
            )
        )
    return history


def test_plain_fedavg_and_the_server_adjustment_have_their_colours_everywhere():
    fedavg, adjusted = plots.PALETTE["fedavg"], plots.PALETTE["fixed"]
    history = _history([0.5, 0.6, 0.7], aggregate=[0.4, 0.5, 0.6])

    fig = plots.plot_accuracy(history)  # after the adjustment, and before it
    assert [to_hex(line.get_color()) for line in fig.axes[0].lines] == [
        adjusted.lower(),
        fedavg.lower(),
    ]
    plt.close(fig)
    fig = plots.plot_round([0.3, 0.4], 0.5, 0.6)
    assert [to_hex(line.get_color()) for line in fig.axes[0].lines] == [
        fedavg.lower(),
        adjusted.lower(),
    ]
    plt.close(fig)
    results = {"fixed": [history], "fedavg": [history], "mine": [history]}
    fig = plots.plot_methods(results)
    colours = [to_hex(line.get_color()) for line in fig.axes[0].lines]
    assert colours[:2] == [adjusted.lower(), fedavg.lower()]
    assert colours[2] not in colours[:2]  # a name outside the palette: a free colour
    plt.close(fig)
    # A lesson that plots "FedAvg" then the adjusted run gets the same two colours.
    fig = plots.plot_histories({"FedAvg": history, "adjusted": history})
    solid = [line for line in fig.axes[0].lines if line.get_marker() == "."]
    assert [to_hex(line.get_color()) for line in solid] == [
        fedavg.lower(),
        adjusted.lower(),
    ]
    plt.close(fig)


def test_legend_of_many_runs_sits_below_the_curves():
    rng = np.random.default_rng(0)
    histories = {
        f"participation=0.{k}, seed={k}, server_steps={k}": _history(
            rng.uniform(0, 1, 30)
        )
        for k in range(12)
    }
    fig = plots.plot_histories(histories, rounds=30)
    fig.canvas.draw()
    (ax,) = fig.axes
    legend, axes_box = ax.get_legend().get_window_extent(), ax.get_window_extent()
    overlap_x = min(legend.x1, axes_box.x1) - max(legend.x0, axes_box.x0)
    overlap_y = min(legend.y1, axes_box.y1) - max(legend.y0, axes_box.y0)
    overlap = max(overlap_x, 0) * max(overlap_y, 0)
    area = axes_box.width * axes_box.height
    assert area / (fig.bbox.width * fig.bbox.height) >= 0.35
    assert overlap / area < 0.15
    colours = [line.get_color() for line in ax.lines if line.get_marker() == "."]
    assert len(set(colours[:10])) == 10  # every colour of RUN_COLORS, none twice
    plt.close(fig)
    fig = plots.plot_histories(dict(list(histories.items())[:3]))
    assert (
        fig.axes[0]
        .get_legend()
        .get_window_extent()
        .overlaps(fig.axes[0].get_window_extent())
    )  # a few runs: in the corner, as before
    plt.close(fig)


def test_runs_are_named_in_plain_words():
    base = fl.FedConfig()
    twin = base.replace(**fl.METHODS["fedavg"])
    feddu = base.replace(**fl.METHODS["feddu"])
    hybrid = base.replace(**fl.METHODS["hybrid"])
    assert plots.run_labels([base, twin, feddu, hybrid]) == [
        "server_steps=5",
        "plain FedAvg",
        "FedDU",
        "Hybrid-FL",
    ]
    more = base.replace(server_steps=10, participation=0.5)
    assert plots.run_labels([base, more]) == [
        "server_steps=5, participation=0.2",
        "server_steps=10, participation=0.5",
    ]
    # Same method: only what differs; server_lr is ignored by plain FedAvg.
    assert plots.run_labels([twin, twin.replace(seed=3, server_lr=0.5)]) == [
        "seed=0",
        "seed=3",
    ]
    assert plots.run_labels([base]) == ["server_steps=5"]  # alone: the method


def test_device_strip_draws_one_column_per_device():
    accuracy = {"this run": [0.2, 0.9, 0.5], "plain FedAvg": [0.1, 0.8, 0.4]}
    fig = plots.plot_device_strip(accuracy, colors={"this run": "#D55E00"})
    (ax,) = fig.axes
    assert [bar.get_height() for bar in ax.patches] == [0.2, 0.9, 0.5]
    assert to_hex(ax.patches[0].get_facecolor()) == "#d55e00"
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [0.1, 0.8, 0.4])
    assert ax.get_xlim() == (-0.5, 2.5)
    plt.close(fig)
