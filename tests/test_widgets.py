"""The playground, headless: set ``.value``, ``click()`` the buttons, read the state."""

import asyncio
import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch

import fedlearn_lab as fl
from fedlearn_lab import widgets
from fedlearn_lab.partition import label_counts
from fedlearn_lab.state import make_setup

torch.set_num_threads(1)  # tiny models: extra threads only add contention

SMALL = dict(num_devices=10, participation=0.3, local_epochs=1, rounds=4)


@pytest.fixture(scope="module")
def data():
    return fl.load_digits()


@pytest.fixture
def pg(data):
    return widgets.Playground(data, **SMALL)


def lines(pg):
    """(x, y) of every line on the accuracy axes, in drawing order."""
    return [(list(ln.get_xdata()), list(ln.get_ydata())) for ln in pg._curves_ax.lines]


def test_controls_are_named_after_config_fields_and_readable(pg):
    fields = {f.name for f in dataclasses.fields(fl.FedConfig)}
    assert set(pg.controls) <= fields
    assert {"participation", "skew", "partition", "server_steps", "seed"} <= set(
        pg.controls
    )
    for name, control in pg.controls.items():
        assert control.description == name
        assert control.style.description_width == "initial"
        assert control.value == getattr(pg.config, name)


def test_config_follows_the_controls_and_keeps_other_fields(data):
    pg = widgets.Playground(data, batch_size=8, **SMALL)
    pg.controls["participation"].value = 0.5
    pg.controls["server_steps"].value = 12
    pg.controls["partition"].value = "shards"
    pg.controls["skew"].value = 2.0
    expected = fl.FedConfig(**{**SMALL, "batch_size": 8}).replace(
        participation=0.5, server_steps=12, partition="shards", skew=2.0
    )
    assert pg.config == expected


def test_invalid_start_config_raises_before_anything_is_built(data):
    with pytest.raises(ValueError, match="participation"):
        widgets.Playground(data, participation=0)


def test_run_from_code_matches_the_core_and_grows_one_point_per_round(pg, data):
    seen = []  # (status, points on the curve) each time the status label changes
    pg.status.observe(lambda ch: seen.append((ch.new, len(lines(pg)[0][0]))), "value")
    history = pg.run()
    assert history.records == fl.run(pg.config, data).history.records
    assert pg.history is history and [r.history for r in pg.runs] == [history]
    per_round = [(s, n) for s, n in seen if "done" not in s]
    assert per_round[1:] == [(f"round {k}/4", k) for k in range(1, 5)]
    assert pg.status.value.startswith("round 4/4 done")
    assert f"accuracy {history.final_accuracy:.3f}" in pg.status.value
    assert not pg.run_button.disabled and pg.stop_button.disabled


def test_run_button_without_event_loop_trains_in_place(pg):
    pg.run_button.click()
    assert len(pg.history) == 4 and not pg.running


def test_compare_runs_plain_fedavg_alongside_with_labels(pg):
    pg.compare.value = True
    pg.run()
    assert [r.config.server_steps for r in pg.runs] == [5, 0]
    twin = pg.runs[1].history
    assert twin.accuracy == twin.aggregate_accuracy  # no adjustment
    assert pg.history is pg.runs[0].history
    legend = [t.get_text() for t in pg._curves_ax.get_legend().get_texts()]
    assert legend == ["server_steps=5", "server_steps=0"]
    # Adjusted run: solid + dashed; plain FedAvg: solid only.
    assert len(pg._curves_ax.lines) == 3


def test_earlier_runs_stay_labelled_by_what_differed(pg):
    pg.run()
    pg.controls["participation"].value = 0.6
    pg.controls["seed"].value = 3
    pg.run()
    assert [r.config.participation for r in pg.runs] == [0.3, 0.6]
    legend = [t.get_text() for t in pg._curves_ax.get_legend().get_texts()]
    assert legend == ["participation=0.3, seed=0", "participation=0.6, seed=3"]
    assert "participation=0.6, seed=3" in pg.status.value


def test_going_back_to_a_run_config_does_not_retrain(pg, monkeypatch):
    pg.run()
    first = pg.history
    pg.controls["server_steps"].value = 0
    pg.run()
    monkeypatch.setattr(fl.Federation, "step", lambda fed: pytest.fail("retrained"))
    pg.controls["server_steps"].value = 5
    assert pg.run() is first
    pg.clear()
    assert pg.run() is first and len(pg.runs) == 1


def test_invalid_combination_shows_the_core_message_and_keeps_curves(pg):
    pg.run()
    before = lines(pg)
    pg.controls["partition"].value = "shards"  # skew 0.5 is no whole number of classes
    assert "skew must be a whole number" in pg.error.value
    assert pg.run() is None
    pg.run_button.click()
    assert lines(pg) == before and len(pg.runs) == 1
    pg.controls["skew"].value = 2.0
    assert pg.error.value == ""


def test_setup_errors_reach_the_panel_too(pg):
    pg.controls["partition"].value = "natural"  # digits has no natural split
    assert "natural" in pg.error.value and "Traceback" not in pg.error.value
    assert pg.run() is None


def test_divergence_is_shown_and_the_run_ends(data):
    pg = widgets.Playground(data, **{**SMALL, "server_lr": 1e30})
    pg.run()
    assert "diverged" in pg.error.value
    assert len(pg.history) == 0 and "stopped" in pg.status.value
    assert not pg.run_button.disabled


def test_stop_mid_run_keeps_what_was_computed_and_resumes(pg, data):
    def stop_after_two(change):
        if change.new == "round 2/4":
            pg.stop_button.click()

    pg.status.observe(stop_after_two, "value")
    pg.run()
    assert len(pg.history) == 2 and pg.status.value.startswith("round 2/4 stopped")
    pg.status.unobserve(stop_after_two, "value")
    pg.run()  # resumes the stopped run rather than starting over
    assert len(pg.runs) == 1
    assert pg.history.records == fl.run(pg.config, data).history.records


def test_stop_button_works_while_the_run_button_trains_in_the_background(data):
    pg = widgets.Playground(data, **{**SMALL, "rounds": 50})

    async def click_run_then_stop():
        pg.run_button.click()  # returns at once: the rounds run in a worker thread
        assert pg.running and pg.run_button.disabled and not pg.stop_button.disabled
        while len(pg.history) < 2:
            await asyncio.sleep(0.005)  # the event loop stays free between rounds
        pg.stop_button.click()
        while pg.running:
            await asyncio.sleep(0.005)

    asyncio.run(asyncio.wait_for(click_run_then_stop(), timeout=60))
    assert 2 <= len(pg.history) < 50
    assert "stopped" in pg.status.value and pg.stop_button.disabled
    assert lines(pg)[0][0] == list(range(1, len(pg.history) + 1))
    reference = fl.run(pg.config.replace(rounds=len(pg.history)), data).history
    assert pg.history.records == reference.records


def test_heatmap_shows_the_partition_and_redraws_only_when_it_changes(
    pg, data, monkeypatch
):
    draws = []
    monkeypatch.setattr(pg.heatmap, "draw_idle", lambda: draws.append(1))

    def shown():
        return pg.heatmap.figure.axes[0].images[0].get_array().T  # (devices, classes)

    def expected(cfg):
        parts = [p.numpy() for p in make_setup(cfg, data).device_indices]
        return label_counts(data.y_train.numpy(), parts, data.num_classes)

    np.testing.assert_array_equal(shown(), expected(pg.config))
    pg.controls["skew"].value = 0.1
    np.testing.assert_array_equal(shown(), expected(pg.config))
    pg.controls["num_devices"].value = 20
    assert shown().shape == (20, 10)
    pg.controls["local_lr"].value = 0.01  # no change to the partition: no redraw
    pg.controls["partition"].value = "iid"
    assert len(draws) == 3 and pg.history is None  # nothing was trained
    assert "iid" in pg.heatmap.figure.axes[0].get_title()


def test_clear_removes_every_run_and_line(pg):
    pg.compare.value = True
    pg.run()
    pg.clear_button.click()
    assert pg.runs == [] and pg.history is None
    assert lines(pg) == [] and pg._curves_ax.get_legend() is None
    assert pg.status.value == "cleared"


def test_run_while_running_is_refused(data):
    pg = widgets.Playground(data, **{**SMALL, "rounds": 50})

    async def run_twice():
        pg.run_button.click()
        with pytest.raises(RuntimeError, match="in progress"):
            pg.run()
        pg.stop()
        while pg.running:
            await asyncio.sleep(0.005)

    asyncio.run(asyncio.wait_for(run_twice(), timeout=60))


def test_background_run_shows_divergence_in_the_panel(data):
    pg = widgets.Playground(data, **{**SMALL, "server_lr": 1e30})

    async def click_run():
        pg.run_button.click()
        while pg.running:
            await asyncio.sleep(0.005)

    asyncio.run(asyncio.wait_for(click_run(), timeout=60))
    assert "diverged" in pg.error.value and "stopped" in pg.status.value


def test_widgets_module_loads_on_first_use():
    code = (
        "import sys, fedlearn_lab as fl\n"
        "assert 'ipywidgets' not in sys.modules\n"
        "assert fl.widgets.Playground.__name__ == 'Playground'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_background_run_gives_a_watching_browser_one_frame_per_round(pg, monkeypatch):
    pg.curves.syncing_data_url = False  # as once a browser view has opened the canvas
    frames = []  # points on the curve in each frame the "browser" rendered

    def render():
        pg.curves.draw()  # what ipympl does on the browser's draw request
        frames.append(len(lines(pg)[0][0]))

    def draw_idle():  # the browser asks for the frame a little later
        asyncio.get_running_loop().call_later(0.03, render)

    monkeypatch.setattr(pg.curves, "draw_idle", draw_idle)

    async def click_run():
        pg.run_button.click()
        while pg.running:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.1)

    asyncio.run(asyncio.wait_for(click_run(), timeout=60))
    assert frames[:5] == [0, 1, 2, 3, 4]  # no round skipped, none shown twice
