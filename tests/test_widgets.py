"""The playground, headless: set ``.value``, ``click()`` the buttons, read the state."""

import asyncio
import dataclasses
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from matplotlib.artist import Artist

import fedlearn_lab as fl
from fedlearn_lab import plots, widgets

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


def click_in_loop(pg, *buttons):
    """Click under a running event loop (as in a kernel) and wait for the run."""

    async def click():
        for button in buttons:
            button.click()
        while pg.running:
            await asyncio.sleep(0.005)

    asyncio.run(asyncio.wait_for(click(), timeout=120))


def greyed(canvas) -> bool:
    return any(a.get_gid() == "fedlearn-grey" for a in canvas.figure.artists)


# -- controls ------------------------------------------------------------------


def test_controls_are_named_after_config_fields_and_explained(pg):
    fields = {f.name for f in dataclasses.fields(fl.FedConfig)}
    assert set(pg.controls) <= fields
    assert {"participation", "skew", "partition", "server_steps", "seed"} <= set(
        pg.controls
    )
    for name, control in pg.controls.items():
        assert control.description == name
        assert control.style.description_width == "initial"
        assert control.value == getattr(pg.config, name)
        # A tooltip in plain words: what it is, and what to expect when it moves.
        assert len(control.tooltip.split()) >= 8, name
    for button in (pg.run_button, pg.stop_button, pg.clear_button, pg.pin_button):
        assert len(button.tooltip.split()) >= 6
    assert pg.compare.tooltip and pg.large.tooltip


def test_config_follows_the_controls_and_keeps_other_fields(data):
    pg = widgets.Playground(data, batch_size=8, **SMALL)
    pg.controls["participation"].value = 0.5
    pg.controls["server_steps"].value = 12
    pg.controls["partition"].value = "shards"
    pg.controls["skew"].value = 3
    expected = fl.FedConfig(**{**SMALL, "batch_size": 8}).replace(
        participation=0.5, server_steps=12, partition="shards", skew=3
    )
    assert pg.config == expected


def test_invalid_start_config_raises_before_anything_is_built(data):
    with pytest.raises(ValueError, match="participation"):
        widgets.Playground(data, participation=0)


def test_start_values_are_shown_as_given_or_refused(data):
    given = dict(
        participation=0.01,
        seed=2**40,
        local_lr=0.03,
        skew=0.003,
        num_devices=300,
        rounds=150,
        shared_fraction=0.7,
    )
    # 300 devices hold about 1.4 samples each: an iid split, single-sample devices.
    pg = widgets.Playground(data, **given, partition="iid", min_device_size=1)
    for name, value in given.items():
        assert pg.controls[name].value == value, name
        assert getattr(pg.config, name) == value, name
    assert widgets.Playground(data, partition="shards", skew=3).config.skew == 3
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*53"):
        widgets.Playground(data, seed=2**60)
    with pytest.raises(ValueError, match="natural"):  # digits has no natural split
        widgets.Playground(data, partition="natural")
    with pytest.raises(ValueError, match="num_devices"):
        widgets.Playground(data, num_devices=5000)


def test_skew_control_follows_the_partition(pg):
    alpha = pg.controls["skew"]
    values = [value for _, value in alpha.options]
    ratios = np.diff(np.log10(values))
    assert values[0] <= 0.01 and values[-1] >= 100 and ratios.max() < 0.45  # log
    assert "Dirichlet α" in alpha.tooltip

    pg.controls["partition"].value = "shards"  # at α = 0.5: no error any more
    shards = pg.controls["skew"]
    assert shards is not alpha and shards.description == "skew"
    assert isinstance(shards.value, int) and shards.step == 1
    assert "shards per device" in shards.tooltip.lower()
    assert pg.error.value == "" and pg.config.skew == shards.value
    assert pg._skew_slot.children == (shards,)

    pg.controls["partition"].value = "dirichlet"
    assert pg.controls["skew"] is alpha and pg.config.skew == 0.5
    pg.controls["partition"].value = "iid"
    assert pg.controls["skew"].disabled
    assert pg.controls["skew"].tooltip.startswith("Has no effect now: partition='iid'")


def test_natural_is_offered_only_with_a_natural_split(data):
    pg = widgets.Playground(data, **SMALL)
    assert "natural" not in [v for _, v in pg.controls["partition"].options]
    synthetic = fl.synthetic(0.5, 0.5, num_devices=8)
    pg = widgets.Playground(synthetic, **{**SMALL, "num_devices": 8})
    assert "natural" in [v for _, v in pg.controls["partition"].options]
    pg.controls["partition"].value = "natural"
    assert pg.error.value == "" and pg.run() is not None


@pytest.mark.parametrize(
    "changes", [{"server_schedule": "feddu"}, {"shared_use": "hybrid"}, {}]
)
def test_controls_that_do_nothing_are_disabled_with_the_reason(pg, changes):
    for name, value in changes.items():
        pg.controls[name].value = value
    why = fl.inactive_settings(pg.config)  # the core says what has no effect
    assert "server_steps" in why or not changes
    for name, control in pg.controls.items():
        assert control.disabled == (name in why), name
        if name in why:
            assert control.tooltip.startswith(f"Has no effect now: {why[name]}")
    for name in changes:  # and back: enabled again
        pg.controls[name].value = getattr(fl.FedConfig(), name)
    assert not pg.controls["server_steps"].disabled


def test_invalid_setting_clears_status_greys_figures_and_says_what_to_change(pg):
    pg.run()
    before = lines(pg)
    pg.controls["shared_fraction"].value = 0.0  # server_steps=5 needs shared data
    assert "server_steps must be 0" in pg.error.value
    assert "Change <b>server_steps</b>" in pg.error.value
    assert pg.status.value == ""
    assert greyed(pg.heatmap) and greyed(pg.devices)
    assert pg.run() is None
    pg.run_button.click()
    assert lines(pg) == before and len(pg.runs) == 1
    pg.controls["server_steps"].value = 0
    assert pg.error.value == "" and pg.status.value.startswith("ready")
    assert not greyed(pg.heatmap) and not greyed(pg.devices)


def test_setup_errors_reach_the_panel_too(pg):
    pg.controls["num_devices"].value = 200
    pg.controls["partition"].value = "shards"
    pg.controls["skew"].value = 10  # 2000 shards > the training samples
    assert "shards needs" in pg.error.value and "Traceback" not in pg.error.value
    assert pg.run() is None


# -- running -------------------------------------------------------------------


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


@pytest.mark.parametrize(
    "method", ["fixed", "feddu", "hybrid", "data_sharing"], ids=lambda m: m
)
def test_compare_runs_plain_fedavg_alongside(data, method):
    pg = widgets.Playground(data, **SMALL, **fl.METHODS[method])
    pg.compare.value = True
    pg.run()
    main, twin = pg.runs
    assert twin.config == main.config.replace(**fl.METHODS["fedavg"])
    assert (twin.config.shared_use, twin.config.server_schedule) == ("adjust", "fixed")
    assert twin.config.server_steps == 0 and fl.method_of(twin.config) == "fedavg"
    assert twin.history.accuracy != main.history.accuracy
    assert twin.history.records == fl.run(twin.config, data).history.records
    assert pg._labels()[1] == "plain FedAvg"
    assert pg.history is main.history
    # The palette: each method's own colour; plain FedAvg black.
    assert main.color == plots.PALETTE[method] and twin.color == plots.PALETTE["fedavg"]


def test_runs_are_named_in_plain_words(pg):
    pg.compare.value = True
    pg.run()
    assert pg._labels() == ["server_steps=5", "plain FedAvg"]
    pg.controls["server_schedule"].value = "feddu"
    pg.run()
    assert pg._labels() == ["server_steps=5", "FedDU", "plain FedAvg"]  # one twin
    assert "FedDU" in pg.status.value and "server_steps=0" not in pg.run_list.value
    assert "plain FedAvg" in pg.run_list.value


def test_earlier_runs_stay_labelled_by_what_differed(pg):
    pg.run()
    pg.controls["participation"].value = 0.6
    pg.controls["seed"].value = 3
    pg.run()
    assert [r.config.participation for r in pg.runs] == [0.3, 0.6]
    assert pg._labels() == ["participation=0.3, seed=0", "participation=0.6, seed=3"]
    assert "participation=0.6, seed=3" in pg.status.value


def test_going_back_to_a_run_config_does_not_retrain(pg, monkeypatch):
    pg.run()
    first = pg.history
    pg.controls["server_steps"].value = 0
    pg.run()
    monkeypatch.setattr(fl.Federation, "step", lambda fed: pytest.fail("retrained"))
    pg.controls["server_steps"].value = 5
    assert pg.status.value.startswith("round 4/4 done")  # shown before Run
    assert pg.run() is first
    pg.clear()
    assert pg.run() is first and len(pg.runs) == 1


def test_divergence_is_shown_and_the_run_ends(data):
    pg = widgets.Playground(data, **{**SMALL, "server_lr": 1e30})
    pg.run()
    assert "diverged" in pg.error.value
    assert len(pg.history) == 0 and "stopped" in pg.status.value
    assert not pg.run_button.disabled and not pg.running


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


def test_two_run_clicks_in_a_row_start_one_run(data):
    pg = widgets.Playground(data, **{**SMALL, "rounds": 6})
    refused = []

    async def click_twice_then_run():
        pg.run_button.click()
        pg.run_button.click()  # reaches the kernel before the button is disabled
        refused.append(pg.run())  # and from code, too
        while pg.running:
            await asyncio.sleep(0.005)

    asyncio.run(asyncio.wait_for(click_twice_then_run(), timeout=60))
    assert refused == [None]
    assert "run is in progress" in pg.error.value
    assert len(pg.runs) == 1 and len(pg.history) == 6
    assert pg.history.records == fl.run(pg.config, data).history.records
    assert pg.status.value.startswith("round 6/6 done")


def test_two_threads_running_at_once_start_one_run(data):
    pg = widgets.Playground(data, **SMALL)
    start, results = threading.Barrier(2), []

    def run():
        start.wait()
        results.append(pg.run())

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(r is None for r in results) == [False, True]
    assert pg.history.records == fl.run(pg.config, data).history.records


def test_heatmap_shows_the_partition_and_redraws_only_when_it_changes(
    pg, data, monkeypatch
):
    draws = []
    monkeypatch.setattr(pg.heatmap, "push", lambda: draws.append(1))

    def shown():
        return pg.heatmap.figure.axes[0].images[0].get_array().T  # (devices, classes)

    def expected(cfg):
        return fl.Federation(cfg, data).label_counts()

    np.testing.assert_array_equal(shown(), expected(pg.config))
    pg.controls["skew"].value = 0.1
    np.testing.assert_array_equal(shown(), expected(pg.config))
    pg.controls["num_devices"].value = 20
    assert shown().shape == (20, 10)
    pg.controls["local_lr"].value = 0.01  # no change to the partition: no redraw
    pg.controls["partition"].value = "iid"
    assert len(draws) == 3 and pg.history is None  # nothing was trained
    assert "iid" in pg.heatmap.figure.axes[0].get_title()


def test_device_view_shows_the_published_model_in_the_heatmaps_device_order(pg, data):
    pg.compare.value = True
    pg.run()
    reference = fl.run(pg.config, data).device_accuracy  # the core's published model
    np.testing.assert_allclose(pg.device_accuracy, reference)
    strip = pg.devices.figure.axes[0]
    np.testing.assert_allclose([b.get_height() for b in strip.patches], reference)
    twin = fl.run(pg.runs[1].config, data).device_accuracy
    np.testing.assert_allclose(strip.lines[0].get_ydata(), twin)  # plain FedAvg
    heat = pg.heatmap.figure.axes[0]
    assert strip.get_xlim() == heat.get_xlim()
    for fig in (pg.heatmap.figure, pg.devices.figure):
        fig.canvas.draw()
    assert np.allclose(  # the same device is in the same column of both figures
        strip.get_window_extent().intervalx, heat.get_window_extent().intervalx
    )


def test_clear_removes_every_run_and_line(pg):
    pg.compare.value = True
    pg.run()
    pg.pin()
    pg.clear_button.click()
    assert pg.runs == [] and pg.history is None
    assert lines(pg) == [] and pg._curves_ax.get_legend() is None
    assert pg.status.value == "cleared"


def test_background_run_shows_divergence_in_the_panel(data):
    pg = widgets.Playground(data, **{**SMALL, "server_lr": 1e30})
    click_in_loop(pg, pg.run_button)
    assert "diverged" in pg.error.value and "stopped" in pg.status.value


def test_widgets_module_loads_on_first_use():
    code = (
        "import sys, fedlearn_lab as fl\n"
        "assert 'ipywidgets' not in sys.modules\n"
        "assert fl.widgets.Playground.__name__ == 'Playground'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# -- what a browser gets ---------------------------------------------------------


def test_each_round_and_the_final_frame_are_pushed_to_a_watching_browser(
    pg, monkeypatch
):
    for canvas in (pg.curves, pg.heatmap, pg.devices):
        canvas.syncing_data_url = False  # as once a browser view has opened it
    frames = []  # points on the curve in each frame sent to the browser

    def send_binary(data):
        assert pg.curves._current_image_mode == "full"  # never a diff: see draw()
        frames.append(len(lines(pg)[0][0]) if pg._curves_ax.lines else 0)

    monkeypatch.setattr(pg.curves, "send_binary", send_binary)
    monkeypatch.setattr(pg.curves, "draw_idle", lambda: pytest.fail("left to idle"))
    click_in_loop(pg, pg.run_button)
    assert {1, 2, 3, 4} <= set(frames) and frames[-1] == 4  # the final frame went out
    assert frames == sorted(frames)


@pytest.mark.parametrize("figure", ["curves", "heatmap"])
def test_a_render_on_another_thread_and_a_change_never_overlap(
    data, figure, monkeypatch
):
    """The browser's draw requests run on another thread (a JupyterLab subshell)
    while a run changes the figures. A probe artist holds a render open and lets the
    change try to barge in: with the panel's lock, the change waits for the render."""
    pg = widgets.Playground(data, **SMALL)
    pg.run()
    canvas = getattr(pg, figure)
    events, rendering, changed, opaque = [], threading.Event(), threading.Event(), []

    class Probe(Artist):
        def draw(self, renderer):
            events.append("render")
            rendering.set()
            changed.wait(timeout=1.0)  # a change that can barge in does so now
            events.append("render end")

    def send_binary(data):  # the frame ipympl sends: never transparent
        opaque.append(bool(((canvas._last_buff >> 24) == 255).all()))

    for name in ("plot_histories", "plot_label_distribution"):  # inside a change
        plot = getattr(widgets, name)
        monkeypatch.setattr(
            widgets,
            name,
            lambda *a, plot=plot, **k: events.append("change") or plot(*a, **k),
        )
    canvas.send_binary = send_binary
    canvas.figure.add_artist(Probe())
    change = {
        "curves": pg._draw_curves,  # as each round does
        "heatmap": lambda: pg._draw_heatmap(pg.config),  # as a new partition does
    }[figure]
    browser = threading.Thread(  # exactly what ipympl runs on a draw request
        target=canvas._handle_message, args=(canvas, {"type": "draw"}, [])
    )
    browser.start()
    assert rendering.wait(timeout=30)
    change()
    changed.set()
    browser.join(timeout=30)
    assert events == ["render", "render end", "change"]
    assert opaque == [True]


def test_a_change_on_another_thread_waits_for_the_run_to_end(pg, monkeypatch):
    """JupyterLab may deliver a slider's messages on another thread than the Run
    button's: the change must not slip into the middle of the end of a run."""
    ending, go_on = threading.Event(), threading.Event()
    device_accuracy = fl.Federation.device_accuracy

    def slow_device_accuracy(fed):  # inside the end of the run
        ending.set()
        go_on.wait(timeout=2)
        return device_accuracy(fed)

    monkeypatch.setattr(fl.Federation, "device_accuracy", slow_device_accuracy)
    runner = threading.Thread(target=pg.run)
    runner.start()
    assert ending.wait(timeout=60)
    control = pg.controls["shared_fraction"]
    changer = threading.Thread(target=setattr, args=(control, "value", 0.0))
    changer.start()
    changer.join(timeout=0.5)  # it waits, or slips in now
    go_on.set()
    for thread in (runner, changer):
        thread.join(timeout=60)
    assert not pg.running and "server_steps must be 0" in pg.error.value
    assert pg.status.value == "" and greyed(pg.heatmap)  # the change came last


def test_controls_messages_are_routed_to_the_thread_of_each_callback(pg, monkeypatch):
    """ipykernel sends a widget's messages to the thread that last sent on it: the
    panel sends on every control from the thread of a callback that came from
    elsewhere, so a slider moved just before Run is not handled after it."""
    sent = []
    where = ["subshell-1"]
    monkeypatch.setattr(widgets, "_message_thread", lambda: where[0])
    for _, control in pg._widgets():
        monkeypatch.setattr(
            control,
            "send_state",
            lambda key=None, c=control: key == "_view_count" and sent.append(c),
        )
    pg.controls["seed"].value = 1  # a message from the browser, on a subshell
    assert {id(c) for _, c in pg._widgets()} <= {id(c) for c in sent}
    count = len(sent)
    pg.controls["seed"].value = 2  # the same thread: nothing to do
    assert len(sent) == count
    where[0] = None  # a cell, on the main shell
    pg.controls["seed"].value = 3
    assert len(sent) > count


def test_the_current_run_is_drawn_on_top(pg):
    pg.compare.value = True
    pg.run()
    solid = [ln for ln in pg._curves_ax.lines if ln.get_marker() == "."]
    assert solid[-1].get_color() == pg.runs[0].color  # the run, over its twin


def test_first_view_brings_the_panel_into_view_once_it_is_placed(pg, monkeypatch):
    focused = []
    monkeypatch.setattr(pg.run_button, "focus", lambda: focused.append(1))
    parts = pg._placing()
    assert pg.curves in parts and pg.run_button in parts
    for part in parts[:-1]:  # the browser says each view is in the page...
        part._view_count = 1
    assert focused == []  # ...but one figure is not yet: the page is too short
    parts[-1]._view_count = 1
    assert focused == [1]
    pg.curves._view_count = 2  # another view (a second output of the panel)
    assert focused == [1]


# -- readable after many runs ----------------------------------------------------


def test_plot_stays_readable_after_twelve_runs(data):
    pg = widgets.Playground(data, **{**SMALL, "rounds": 2})
    colours = {}  # config -> colour while shown
    for seed in range(12):
        pg.controls["seed"].value = seed
        pg.run()
        if seed == 2:
            pg.pin()
        for run in pg.runs:
            assert colours.setdefault(run.config, run.color) == run.color
        shown = {run.config for run in pg.runs}
        colours = {c: v for c, v in colours.items() if c in shown}
    seeds = [run.config.seed for run in pg.runs]
    assert seeds == [2, 6, 7, 8, 9, 10, 11]  # the pinned run, then the last six
    assert len(pg.runs) == widgets.MAX_RECENT + 1
    assert len({run.color for run in pg.runs}) == len(pg.runs)

    fig = pg.curves.figure
    fig.canvas.draw()
    ax = pg._curves_ax
    axes_share = _area(ax.get_window_extent()) / _area(fig.bbox)
    legend = ax.get_legend()
    covered = 0.0 if legend is None else _overlap(legend, ax) / _area(ax.bbox)
    assert axes_share >= 0.35 and covered < 0.15
    colours_drawn = [line.get_color() for line in ax.lines if line.get_marker() == "."]
    assert len(set(colours_drawn)) == len(pg.runs)
    assert pg.run_list.value.count('class="fedlearn-run"') == len(pg.runs)
    assert "pinned" in pg.run_list.value


def test_a_run_shown_again_keeps_its_colour_and_no_new_run_takes_it(data):
    pg = widgets.Playground(data, **{**SMALL, "rounds": 2, **fl.METHODS["feddu"]})
    pg.compare.value = True
    pg.run()  # FedDU (blue) and plain FedAvg (black)
    pg.controls["partition"].value = "shards"
    pg.run()  # FedDU again: the next free colour; its plain FedAvg too
    twin = pg.runs[-1]
    assert twin.color not in (plots.PALETTE["fedavg"], plots.PALETTE["feddu"])
    pg.controls["server_schedule"].value = "fixed"
    pg.controls["shared_use"].value = "hybrid"
    pg.run()  # Hybrid-FL, with the same plain-FedAvg twin as before
    assert pg.runs[-1] is not twin and pg.runs[-1].config == twin.config
    assert pg.runs[-1].color == twin.color
    assert len({run.color for run in pg.runs}) == len(pg.runs)


def test_pins_are_capped_so_colours_stay_distinct(data):
    pg = widgets.Playground(data, **{**SMALL, "rounds": 1})
    for seed in range(widgets.MAX_PINNED + 1):
        pg.controls["seed"].value = seed
        pg.run()
        pg.pin()
    assert len(pg._pinned) == widgets.MAX_PINNED and "At most" in pg.error.value
    for seed in range(20, 30):
        pg.controls["seed"].value = seed
        pg.run()
    assert len(pg.runs) == widgets.MAX_PINNED + widgets.MAX_RECENT
    assert len({run.color for run in pg.runs}) == len(pg.runs)
    pg.controls["seed"].value = 0
    pg.pin(False)  # not the current run: nothing happens
    pg.run()  # cached: comes back at once, still pinned
    pg.pin(False)
    assert len(pg._pinned) == widgets.MAX_PINNED - 1


def test_large_sizes_fonts_and_figures_for_a_projector(pg):
    pg.run()
    ticks = pg._curves_ax.xaxis.get_ticklabels()[0].get_fontsize()
    width = pg.curves.figure.get_figwidth()
    pg.large.value = True
    assert "fedlearn-large" in pg._dom_classes
    assert pg.curves.figure.get_figwidth() > width
    assert pg._curves_ax.xaxis.get_ticklabels()[0].get_fontsize() >= 1.4 * ticks
    heat = pg.heatmap.figure.axes[0]
    assert heat.title.get_fontsize() >= 16
    pg.large.value = False
    assert pg.curves.figure.get_figwidth() == width


def _area(bbox) -> float:
    return bbox.width * bbox.height


def _overlap(legend, ax) -> float:
    a, b = legend.get_window_extent(), ax.get_window_extent()
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(width, 0) * max(height, 0)


def test_run_labels_never_repeat():
    base = fl.FedConfig(server_steps=0)
    configs = [base, base.replace(server_lr=0.5)]  # differ only where ignored
    assert plots.run_labels(configs) == ["plain FedAvg", "plain FedAvg (2)"]


def test_the_other_remedies_are_controls_with_tooltips(data):
    pg = widgets.Playground(data, **SMALL)
    for name in ("proximal_mu", "scaffold", "server_opt", "server_opt_lr"):
        assert pg.controls[name].description == name
        assert len(pg.controls[name].tooltip) > 30, name
    assert pg.controls["server_opt_lr"].disabled  # server_opt="none"
    pg.controls["server_opt"].value = "adam"
    pg.controls["scaffold"].value = True
    pg.controls["proximal_mu"].value = 0.1
    assert (pg.config.server_opt, pg.config.scaffold) == ("adam", True)
    assert pg.config.proximal_mu == 0.1 and not pg.controls["server_opt_lr"].disabled
    assert fl.method_of(pg.config) == "fedprox+scaffold+fedadam+fixed"
