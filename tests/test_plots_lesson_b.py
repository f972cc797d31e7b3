"""Lesson 03's figures: the server adjustment class by class, and gains over seeds."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from matplotlib.colors import to_hex
from sklearn.metrics import confusion_matrix

import fedlearn_lab as fl
from fedlearn_lab import plots


@given(
    st.integers(2, 6).flatmap(
        lambda k: st.tuples(
            st.just(k),
            st.lists(
                st.tuples(st.integers(0, k - 1), st.integers(0, k - 1)),
                min_size=1,
                max_size=40,
            ),
        )
    )
)
def test_class_accuracy_is_the_confusion_matrix_diagonal_over_its_rows(case):
    num_classes, pairs = case
    labels = np.array([y for y, _ in pairs], dtype=np.int64)
    predicted = np.array([p for _, p in pairs], dtype=np.int64)
    # Oracle: scikit-learn's confusion matrix; a class without samples gives NaN.
    matrix = confusion_matrix(labels, predicted, labels=list(range(num_classes)))
    with np.errstate(invalid="ignore"):
        expected = matrix.diagonal() / matrix.sum(axis=1)
    np.testing.assert_array_equal(
        plots.class_accuracy(labels, predicted, num_classes), expected
    )


def test_class_accuracy_of_no_samples_is_nan_for_every_class():
    empty = np.array([], dtype=np.int64)
    assert np.isnan(plots.class_accuracy(empty, empty, 3)).all()


def test_class_accuracy_takes_torch_tensors_and_agrees_with_overall_accuracy():
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    predicted = torch.tensor([0, 1, 1, 1, 0, 2])
    per_class = plots.class_accuracy(labels, predicted, 3)
    np.testing.assert_allclose(per_class, [0.5, 2 / 3, 1.0])
    counts = np.bincount(labels.numpy())
    overall = (predicted == labels).double().mean().item()
    assert np.dot(per_class, counts) / counts.sum() == pytest.approx(overall)


@pytest.mark.parametrize(
    ("predicted", "labels", "num_classes", "named"),
    [
        ([0, 1], [0, 1], 0, "num_classes"),
        ([0, 1], [0, 1], True, "num_classes"),
        ([0, 1], [0, 1], 2.0, "num_classes"),
        ([0], [0, 1], 2, "y_pred"),
        ([0, 1], [0.0, 1.0], 2, "y_true"),
        ([0, 1], [0, 2], 2, r"y_true must lie in \[0, 1\]"),
        ([0, 1], [-1, 1], 2, "y_true"),
    ],
)
def test_class_accuracy_refuses_bad_input_naming_it(
    predicted, labels, num_classes, named
):
    with pytest.raises(ValueError, match=named):
        plots.class_accuracy(np.array(labels), np.array(predicted), num_classes)


def _bar_heights(ax, color: str) -> list[float]:
    return [
        p.get_height() for p in ax.patches if to_hex(p.get_facecolor()) == to_hex(color)
    ]


def test_plot_adjustment_by_class_shows_the_round_before_and_after_in_the_palette():
    share = np.array([0.5, 0.3, 0.2, 0.0])
    before, after = np.array([0.9, 0.8, 0.2, 0.0]), np.array([0.85, 0.8, 0.6, 0.5])
    shared = np.full(4, 0.25)
    fig = plots.plot_adjustment_by_class(share, before, after, shared_share=shared)
    shares, accuracy = fig.axes
    black, vermillion = plots.method_color("fedavg"), plots.method_color("fixed")
    np.testing.assert_allclose(_bar_heights(accuracy, black), before)
    np.testing.assert_allclose(_bar_heights(accuracy, vermillion), after)
    np.testing.assert_allclose([p.get_height() for p in shares.patches], share)
    (dots,) = shares.lines
    np.testing.assert_allclose(dots.get_ydata(), shared)
    assert to_hex(dots.get_color()) == to_hex(vermillion)
    for ax in fig.axes:
        assert ax.get_title() and ax.get_xlabel() == "class" and ax.get_ylabel()
        assert ax.get_legend() is not None
    plt.close(fig)


def test_plot_adjustment_by_class_draws_on_given_axes_without_a_shared_share():
    fig, axes = plt.subplots(1, 2)
    out = plots.plot_adjustment_by_class([1.0, 0.0], [0.5, 0.1], [0.6, 0.4], axes)
    assert out is fig and not axes[0].lines  # no dots without shared_share
    plt.close(fig)


@pytest.mark.parametrize(
    "arrays",
    [
        ([0.5, 0.5], [0.1, 0.2, 0.3], [0.1, 0.2, 0.3]),
        ([0.5, 0.5], [0.1, 0.2], [0.1]),
        ([[0.5, 0.5]], [[0.1, 0.2]], [[0.1, 0.2]]),
    ],
)
def test_plot_adjustment_by_class_refuses_mismatched_shapes(arrays):
    with pytest.raises(ValueError, match="sampled_share, before, after"):
        plots.plot_adjustment_by_class(*arrays)
    with pytest.raises(ValueError, match="shared_share"):
        plots.plot_adjustment_by_class(
            [0.5, 0.5], [0.1, 0.2], [0.1, 0.2], shared_share=[0.5]
        )


def test_plot_over_seeds_marks_every_seed_and_the_mean_plus_minus_sd():
    series = {
        "plain FedAvg": {0.02: [0.8, 0.7, 0.75], 0.1: [0.7, 0.72, 0.78]},
        "adjusted": {0.02: [0.9, 0.88, 0.91], 0.1: [0.91, 0.92, 0.9]},
    }
    colors = {"plain FedAvg": "#000000", "adjusted": plots.method_color("fixed")}
    fig = plots.plot_over_seeds(series, colors=colors, xlabel="shared_fraction")
    (ax,) = fig.axes
    bars = ax.containers  # one errorbar per (series, x), in order
    assert len(bars) == 4
    for bar, (name, x) in zip(
        bars, [(n, x) for n in series for x in (0.02, 0.1)], strict=True
    ):
        runs = np.array(series[name][x])
        data_line, _, (segments,) = bar.lines
        assert data_line.get_ydata()[0] == pytest.approx(runs.mean())
        (low, high) = segments.get_segments()[0][:, 1]
        assert (low, high) == pytest.approx(
            (runs.mean() - runs.std(ddof=1), runs.mean() + runs.std(ddof=1))
        )
        assert to_hex(data_line.get_color()) == to_hex(colors[name])
    dots = [
        line for line in ax.lines if line.get_marker() == "o"
    ]  # one per (series, x)
    drawn = [list(line.get_ydata()) for line in dots]
    assert drawn == [runs for s in series.values() for runs in s.values()]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.02", "0.1"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(series)
    plt.close(fig)


def test_plot_over_seeds_refuses_no_series():
    with pytest.raises(ValueError, match="series"):
        plots.plot_over_seeds({})


def test_class_accuracy_of_a_trained_federation_averages_to_its_test_accuracy(digits):
    fed = fl.Federation(fl.FedConfig(num_devices=10, rounds=2, local_epochs=1), digits)
    fed.run()
    x, y = digits.x_test, digits.y_test
    predicted = fed.publish()(x).argmax(1)
    per_class = plots.class_accuracy(y, predicted, digits.num_classes)
    counts = np.bincount(y.numpy(), minlength=digits.num_classes)
    overall = np.dot(per_class, counts) / counts.sum()
    assert overall == pytest.approx(fed.history[-1].accuracy)
