"""Figures of lessons 05 (why FedDU's steps fall) and 06 (why robust rules help)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.colors import to_hex
from matplotlib.text import Text

import fedlearn_lab as fl
from fedlearn_lab import plots
from fedlearn_lab.aggregation import AGGREGATORS, Stacked
from fedlearn_lab.reference import evaluate
from fedlearn_lab.rounds import train_returned

FEDDU = fl.FedConfig(
    num_devices=10,
    participation=0.5,
    partition="shards",
    skew=2,
    local_epochs=1,
    shared_fraction=0.1,
    shared_classes=(0, 1, 2, 3, 4),
    server_schedule="feddu",
    rounds=4,
)


@pytest.fixture(scope="module")
def runs(digits) -> dict[str, list[fl.History]]:
    return fl.compare(FEDDU, digits, methods=["fedavg", "fixed", "feddu"], seeds=[0, 1])


def _texts_are_readable(fig) -> None:
    texts = [t for t in fig.findobj(Text) if t.get_text().strip() and t.get_visible()]
    assert texts
    small = [(t.get_text(), t.get_fontsize()) for t in texts if t.get_fontsize() < 11]
    assert not small


# --- lesson 05 ----------------------------------------------------------------------


def test_feddu_factors_recover_the_aggregation_models_accuracy_on_the_shared_dataset(
    digits,
):
    # Oracle: round 1 rebuilt by hand, FedAvg of the devices' updates scored on the
    # shared dataset, must be what feddu_factors reads back out of alpha_1.
    fed = fl.Federation(FEDDU, digits)
    plan = fl.plan_round(fed.setup, 1)
    updates, _ = train_returned(fed.setup, fed.state, plan)
    sizes = [fed.setup.train_sizes[k] for k in plan.returned]
    aggregated = fl.fedavg(Stacked(updates, sizes))
    shared_accuracy, _ = evaluate(fed.setup.model, aggregated, *fed.setup.shared_data)
    history = fed.run()

    parts = plots.feddu_factors(
        history, num_shared=len(fed.shared_indices), decay=FEDDU.server_decay
    )

    assert parts["error"][0] == pytest.approx(1 - shared_accuracy, abs=1e-12)
    assert 0 < shared_accuracy < 1
    np.testing.assert_allclose(
        parts["error"] * parts["balance"] * parts["decay"], parts["alpha"], rtol=1e-12
    )
    np.testing.assert_allclose(parts["decay"], FEDDU.server_decay ** np.arange(4))
    assert np.all((parts["error"] >= -1e-12) & (parts["error"] <= 1 + 1e-12))


def test_feddu_factors_refuse_a_run_that_is_not_feddu_and_bad_arguments(runs):
    with pytest.raises(ValueError, match="history must hold rounds"):
        plots.feddu_factors(runs["fixed"][0], num_shared=10, decay=0.99)
    with pytest.raises(ValueError, match="history must hold rounds"):
        plots.feddu_factors(fl.History(), num_shared=10, decay=0.99)
    with pytest.raises(ValueError, match="num_shared must be an integer >= 1"):
        plots.feddu_factors(runs["feddu"][0], num_shared=0, decay=0.99)
    with pytest.raises(ValueError, match=r"decay must be in \(0, 1\]"):
        plots.feddu_factors(runs["feddu"][0], num_shared=10, decay=1.5)


def test_feddu_factors_are_nan_in_a_round_without_updates(digits):
    history = fl.Federation(FEDDU.replace(dropout=1.0, rounds=2), digits).run()
    parts = plots.feddu_factors(history, num_shared=10, decay=0.99)
    assert np.isnan(parts["error"]).all() and (parts["alpha"] == 0).all()


def test_plot_feddu_factors_draws_alpha_in_feddus_colour_over_three_grey_factors(runs):
    history = runs["feddu"][0]
    fig = plots.plot_feddu_factors(history, num_shared=14, decay=0.99)
    *factors, alpha = fig.axes[0].lines
    assert len(factors) == 3
    assert to_hex(alpha.get_color()) == plots.PALETTE["feddu"].lower()
    np.testing.assert_allclose(alpha.get_ydata(), history.column("server_alpha"))
    assert all(to_hex(line.get_color()) not in plots.RUN_COLORS for line in factors)
    _texts_are_readable(fig)
    plt.close(fig)


def test_plot_server_steps_draws_each_methods_recorded_steps_in_its_colour(runs):
    histories = {name: runs[name][0] for name in ("fedavg", "fixed", "feddu")}
    fig = plots.plot_server_steps(histories)
    lines = fig.axes[0].lines
    for line, (name, history) in zip(lines, histories.items(), strict=True):
        assert to_hex(line.get_color()) == plots.PALETTE[name].lower()
        np.testing.assert_array_equal(line.get_ydata(), history.column("server_steps"))
    labels = [line.get_label() for line in lines]
    assert labels == ["plain FedAvg", f"fixed: {FEDDU.server_steps} steps", "FedDU"]
    _texts_are_readable(fig)
    plt.close(fig)
    with pytest.raises(ValueError, match="name must be one of"):
        plots.plot_server_steps({"fedsgd": runs["fixed"][0]})


def test_plot_adjustment_change_draws_the_mean_change_over_runs(runs):
    fig = plots.plot_adjustment_change(runs)
    zero, *lines = fig.axes[0].lines
    assert list(zero.get_ydata()) == [0, 0]
    for line, name in zip(lines, runs, strict=True):
        expected = np.mean(
            [np.subtract(h.accuracy, h.aggregate_accuracy) for h in runs[name]], axis=0
        )
        np.testing.assert_allclose(line.get_ydata(), expected)
        assert to_hex(line.get_color()) == plots.PALETTE[name].lower()
    np.testing.assert_array_equal(lines[0].get_ydata(), 0)  # plain FedAvg: no change
    _texts_are_readable(fig)
    plt.close(fig)


# --- lesson 06 ----------------------------------------------------------------------


def test_aggregator_colors_name_every_aggregator_and_leave_out_the_adjustments():
    assert (
        set(plots.AGGREGATOR_COLORS) == set(AGGREGATORS) == set(plots.AGGREGATOR_NAMES)
    )
    colours = [*plots.AGGREGATOR_COLORS.values(), plots.MALICIOUS_COLOR]
    assert len(set(colours)) == len(colours)
    assert set(colours) <= set(plots.RUN_COLORS)
    assert plots.AGGREGATOR_COLORS["fedavg"] == plots.PALETTE["fedavg"]
    assert plots.PALETTE["fixed"] not in colours


def test_plot_coordinate_marks_devices_and_where_each_aggregator_lands():
    values = np.array([0.1, 0.12, 0.08, -0.5, 0.11])
    bad = np.array([False, False, False, True, False])
    stacked = Stacked(
        {"w": torch.tensor(values, dtype=torch.float32)[:, None]}, [1] * 5
    )
    aggregates = {n: float(AGGREGATORS[n](stacked)["w"][0]) for n in AGGREGATORS}
    assert aggregates["median"] == pytest.approx(np.median(values))

    fig = plots.plot_coordinate(values, bad, aggregates, honest_mean=0.1025)
    ax = fig.axes[0]
    honest, malicious = ax.collections
    np.testing.assert_allclose(honest.get_offsets()[:, 0], values[~bad])
    np.testing.assert_allclose(malicious.get_offsets()[:, 0], values[bad])
    assert malicious.get_offsets()[0, 1] == 0  # the smallest value: the lowest row
    honest_line, *lines = ax.lines
    assert honest_line.get_xdata()[0] == 0.1025
    for line, (name, value) in zip(lines, aggregates.items(), strict=True):
        assert line.get_xdata()[0] == pytest.approx(value)
        assert to_hex(line.get_color()) == plots.AGGREGATOR_COLORS[name].lower()
    _texts_are_readable(fig)
    plt.close(fig)
    with pytest.raises(ValueError, match="values and malicious"):
        plots.plot_coordinate(values, bad[:3], aggregates)


def test_plot_attack_sweep_draws_one_line_per_aggregator_in_percent():
    accuracy = {"fedavg": [0.9, 0.8, 0.2], "median": [0.9, 0.9, 0.85]}
    fig = plots.plot_attack_sweep([0.0, 0.1, 0.3], accuracy)
    lines = fig.axes[0].lines
    np.testing.assert_allclose(lines[0].get_xdata(), [0, 10, 30])
    np.testing.assert_allclose(lines[1].get_ydata(), accuracy["median"])
    assert [line.get_label() for line in lines] == ["FedAvg (mean)", "median"]
    _texts_are_readable(fig)
    plt.close(fig)
    with pytest.raises(ValueError, match=r"accuracy\['median'\] must have one value"):
        plots.plot_attack_sweep([0.0, 0.1], {"median": [0.9]})
