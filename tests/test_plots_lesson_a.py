"""Figures of lessons 01 and 02: one round in weight space and class by class; label
skew on one colour scale and what it costs plain FedAvg."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from sklearn.metrics import recall_score

import fedlearn_lab as fl
from fedlearn_lab import plots


def _weights(generator: torch.Generator, rows: int) -> dict[str, torch.Tensor]:
    """Stacked weights of ``rows`` small models: a (3, 4) matrix and a bias of 3."""
    return {
        "w": torch.randn(rows, 3, 4, generator=generator),
        "b": torch.randn(rows, 3, generator=generator),
    }


def _row(stacked: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    return {k: v[i] for k, v in stacked.items()}


@pytest.fixture
def round_models():
    """Five devices' weights, their counts, and the global, average, adjusted models."""
    generator = torch.Generator().manual_seed(0)
    devices = _weights(generator, 5)
    counts = [3, 10, 1, 7, 4]
    average = fl.fedavg([(_row(devices, i), n) for i, n in enumerate(counts)])
    adjusted = {k: v + 0.5 for k, v in average.items()}
    start = _row(_weights(generator, 1), 0)
    return devices, counts, [start, average, adjusted]


def test_round_plane_keeps_the_fedavg_average_the_weighted_mean_of_the_devices(
    round_models,
):
    devices, counts, models = round_models
    device_xy, model_xy = plots.round_plane(devices, models)
    share = np.asarray(counts) / sum(counts)
    np.testing.assert_allclose(model_xy[1], share @ device_xy, atol=1e-6)  # float32


def test_round_plane_draws_the_last_move_at_its_true_length_and_upward(round_models):
    devices, _, models = round_models
    _, model_xy = plots.round_plane(devices, models)
    move = torch.cat([(models[2][k] - models[1][k]).flatten() for k in models[1]])
    drawn = model_xy[2] - model_xy[1]
    np.testing.assert_allclose(np.linalg.norm(drawn), float(move.norm()), rtol=1e-6)
    assert drawn[1] > 0


def test_round_plane_direction_1_is_the_devices_first_principal_component(
    round_models,
):
    devices, _, models = round_models
    device_xy, _ = plots.round_plane(devices, models)
    flat = torch.cat([v.flatten(1) for v in devices.values()], 1).double().numpy()
    # Oracle: the variance along the first principal component is the largest
    # eigenvalue of the covariance matrix.
    centred = flat - flat.mean(0)
    largest = np.linalg.eigvalsh(centred.T @ centred)[-1]
    np.testing.assert_allclose(np.sum(device_xy[:, 0] ** 2), largest, rtol=1e-9)


def test_plot_round_weights_sizes_the_devices_by_their_counts(round_models):
    devices, counts, models = round_models
    names = ["before", "FedAvg average", "after server adjustment"]
    colors = {"FedAvg average": plots.PALETTE["fedavg"]}
    fig = plots.plot_round_weights(
        devices, counts, dict(zip(names, models, strict=True)), colors=colors
    )
    ax = fig.axes[0]
    dots = ax.collections[0]
    np.testing.assert_allclose(dots.get_sizes(), 400 * np.asarray(counts) / 10)
    device_xy, model_xy = plots.round_plane(devices, models)
    np.testing.assert_allclose(dots.get_offsets(), device_xy)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[1:] == names
    assert ax.get_ylabel() == "direction of the last move (after server adjustment)"
    plt.close(fig)


def test_plot_round_weights_refuses_counts_that_do_not_match_the_devices(
    round_models,
):
    devices, _, models = round_models
    with pytest.raises(ValueError, match="counts must give one sample count per"):
        plots.plot_round_weights(devices, [1, 2], {"before": models[0]})
    with pytest.raises(ValueError, match="models must name at least one"):
        plots.plot_round_weights(devices, [1] * 5, {})
    with pytest.raises(ValueError, match="models must hold at least one model"):
        plots.round_plane(devices, [{"w": models[0]["w"]}])


def test_class_accuracy_is_the_recall_of_each_class():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 4, 200)
    y_pred = np.where(rng.random(200) < 0.7, y_true, rng.integers(0, 4, 200))
    expected = recall_score(y_true, y_pred, labels=range(4), average=None)
    np.testing.assert_allclose(plots.class_accuracy(y_true, y_pred, 4), expected)


def test_class_accuracy_is_nan_for_an_absent_class_and_refuses_bad_labels():
    accuracy = plots.class_accuracy(torch.tensor([0, 0, 2]), torch.tensor([0, 1, 2]), 3)
    np.testing.assert_array_equal(accuracy[[0, 2]], [0.5, 1.0])
    assert np.isnan(accuracy[1])
    with pytest.raises(ValueError, match=r"y_true must lie in \[0, 2\]"):
        plots.class_accuracy([0, 3], [0, 0], 3)
    with pytest.raises(ValueError, match="y_pred must have the shape of y_true"):
        plots.class_accuracy([0, 1], [0], 3)


def test_plot_class_accuracy_draws_one_bar_per_model_and_class_with_counts():
    accuracy = {"FedAvg average": [0.9, 0.3, 1.0], "after": [0.8, 0.7, 1.0]}
    fig = plots.plot_class_accuracy(
        accuracy, counts=[28, 13, 40], colors={"after": plots.PALETTE["fixed"]}
    )
    ax = fig.axes[0]
    heights = [bar.get_height() for bar in ax.patches]
    assert heights == [0.9, 0.3, 1.0, 0.8, 0.7, 1.0]
    after_color = ax.patches[3].get_facecolor()
    assert plt.matplotlib.colors.to_hex(after_color) == plots.PALETTE["fixed"].lower()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0\n28", "1\n13", "2\n40"]
    plt.close(fig)
    with pytest.raises(ValueError, match="counts must give one number per class"):
        plots.plot_class_accuracy(accuracy, counts=[1, 2])


def test_plot_label_heatmaps_puts_every_partition_on_one_colour_scale():
    counts = {
        "a": np.array([[5, 0], [1, 1]]),
        "b": np.array([[0, 9], [3, 3]]),
        "c": np.array([[2, 2], [2, 2]]),
    }
    fig = plots.plot_label_heatmaps(counts)
    images = [im for ax in fig.axes for im in ax.images]
    assert len(images) == 3
    assert {im.get_clim() for im in images} == {(0, 9)}
    colorbars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(colorbars) == 1
    assert [ax.get_title() for ax in fig.axes[:3]] == ["a", "b", "c"]
    plt.close(fig)
    fig = plots.plot_label_heatmaps(counts, share=True)
    images = [im for ax in fig.axes for im in ax.images]
    assert {im.get_clim() for im in images} == {(0, 1)}
    np.testing.assert_allclose(images[1].get_array(), [[0, 0.5], [1, 0.5]])
    plt.close(fig)
    with pytest.raises(ValueError, match="counts must name at least one"):
        plots.plot_label_heatmaps({})


def test_plot_skew_cost_sorts_partitions_by_mean_label_divergence():
    divergence = {"skewed": [0.6, 0.8], "iid": [0.0, 0.1, 0.2], "mild": [0.3, 0.3]}
    accuracy = {"skewed": 0.4, "iid": 0.9, "mild": 0.8}
    fig = plots.plot_skew_cost(divergence, accuracy)
    spread, cost = fig.axes
    assert [t.get_text() for t in spread.get_yticklabels()] == ["iid", "mild", "skewed"]
    assert [bar.get_width() for bar in cost.patches] == [0.9, 0.8, 0.4]
    means = [line.get_xdata()[0] for line in spread.lines]
    np.testing.assert_allclose(means, [0.1, 0.3, 0.7])
    plt.close(fig)
    with pytest.raises(ValueError, match="must name the same partitions"):
        plots.plot_skew_cost(divergence, {"iid": 0.9})
