"""Lesson 05's figures: methods against rounds and simulated time; FedDU's alpha."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest

import fedlearn_lab as fl
from fedlearn_lab import plots


@pytest.fixture(scope="module")
def results(digits) -> dict[str, list[fl.History]]:
    cfg = fl.FedConfig(num_devices=20, participation=0.25, local_epochs=1, rounds=3)
    return fl.compare(cfg, digits, methods=["fixed", "feddu"], seeds=[0, 1])


def test_plot_methods_draws_the_mean_of_each_method_against_round_and_time(results):
    fig = plots.plot_methods(results, target=0.8)
    by_round, by_time = fig.axes
    assert [line.get_label() for line in by_round.lines[:2]] == ["fixed", "feddu"]
    mean = np.mean([h.accuracy for h in results["feddu"]], axis=0)
    np.testing.assert_allclose(by_round.lines[1].get_ydata(), mean)
    sim_time = np.mean([h.sim_time for h in results["feddu"]], axis=0)
    np.testing.assert_allclose(by_time.lines[1].get_xdata(), sim_time)
    plt.close(fig)


def test_plot_accuracy_vs_time_uses_cumulative_simulated_time(results):
    history = results["fixed"][0]
    fig = plots.plot_accuracy_vs_time(history, label="fixed")
    (line,) = fig.axes[0].lines
    np.testing.assert_allclose(
        line.get_xdata(), np.cumsum(history.column("sim_seconds"))
    )
    plt.close(fig)


def test_plot_feddu_shows_alpha_and_tau_and_tolerates_other_schedules(results):
    fig = plots.plot_feddu(results["feddu"][0])
    alpha_ax, steps_ax = fig.axes
    np.testing.assert_allclose(
        alpha_ax.lines[0].get_ydata(), results["feddu"][0].column("server_alpha")
    )
    assert steps_ax.get_ylabel() == "server steps"
    plt.close(fig)
    fig = plots.plot_feddu(results["fixed"][0])  # alpha_t is None: an empty curve
    assert np.isnan(fig.axes[0].lines[0].get_ydata()).all()
    plt.close(fig)
