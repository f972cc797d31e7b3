"""The playground: controls named after ``FedConfig`` fields, Run/Stop/Clear, live
curves. A thin panel: controls -> ``FedConfig.replace`` -> ``Federation`` -> ``plots``.

Under a running event loop (a Jupyter kernel) the Run button trains in a worker thread,
one round at a time, so the kernel keeps serving Stop clicks and the live figure;
``Playground.run()`` from code blocks until the run ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from typing import Any

import ipywidgets as w
import numpy as np
from ipympl.backend_nbagg import Canvas, FigureManager
from matplotlib.figure import Figure
from traitlets import Bool

from .config import (
    AGGREGATORS,
    MODELS,
    PARTITIONS,
    SERVER_SCHEDULES,
    SHARED_USES,
    FedConfig,
)
from .data import Dataset, load_digits
from .federation import Federation
from .history import History
from .plots import plot_histories, plot_label_distribution, run_labels
from .rounds import DivergedError

_logger = logging.getLogger(__name__)

_STYLE = {"description_width": "initial"}
_SKEWS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 100.0)


def _int(low: int, high: int, step: int = 1) -> Callable[[int], w.ValueWidget]:
    return lambda v: w.IntSlider(value=v, min=low, max=max(high, v), step=step)


def _float(low: float, high: float, step: float) -> Callable[[float], w.ValueWidget]:
    return lambda v: w.FloatSlider(value=v, min=low, max=max(high, v), step=step)


def _log(low: float, high: float) -> Callable[[float], w.ValueWidget]:
    """Powers of ten from 10**low to 10**high, four steps per decade."""
    return lambda v: w.FloatLogSlider(
        value=v,
        min=min(low, math.log10(v)),
        max=max(high, math.log10(v)),
        step=0.25,
        readout_format=".3g",
    )


def _choice(options: tuple[Any, ...]) -> Callable[[Any], w.ValueWidget]:
    return lambda v: w.Dropdown(options=options, value=v)


def _steps(options: tuple[float, ...]) -> Callable[[float], w.ValueWidget]:
    return lambda v: w.SelectionSlider(
        options=[(f"{o:g}", o) for o in sorted({*options, v})], value=v
    )


# One line per FedConfig field the panel controls, grouped as shown; the label is the
# field name. A new field needs one line here.
CONTROLS: dict[str, dict[str, Callable[[Any], w.ValueWidget]]] = {
    "devices": {
        "num_devices": _int(1, 200),
        "participation": _float(0.05, 1.0, 0.05),
        "partition": _choice(PARTITIONS),
        "skew": _steps(_SKEWS),
    },
    "local training": {
        "local_epochs": _int(1, 20),
        "local_lr": _log(-3, 0.5),
        "model": _choice(MODELS),
        "rounds": _int(1, 100),
        "seed": lambda v: w.BoundedIntText(value=v, min=0, max=2**31 - 1),
    },
    "server adjustment": {
        "shared_fraction": _float(0.0, 0.5, 0.01),
        "shared_use": _choice(SHARED_USES),
        "server_schedule": _choice(SERVER_SCHEDULES),
        "server_steps": _int(0, 50),
        "server_lr": _log(-3, 0.5),
        "aggregator": _choice(AGGREGATORS),
    },
}


@dataclass(frozen=True, eq=False)
class Run:
    """One run on the plot: its settings and its (possibly still growing) history."""

    config: FedConfig
    history: History


class Playground(w.VBox):
    """Move the controls, press Run, watch the accuracy curves grow round by round.

    ``Playground(data=None, **config)``: ``data`` defaults to :func:`load_digits`,
    ``config`` sets any ``FedConfig`` field's start value. ``.config`` is the current
    settings, ``.history`` the last run, ``.runs`` every run on the plot; ``.run()``
    trains from code. Finished runs are cached per config, so going back is instant.
    """

    def __init__(self, data: Dataset | None = None, **config: Any) -> None:
        self._base = FedConfig(**config)
        self.data = data if data is not None else load_digits()
        self.runs: list[Run] = []
        self.history: History | None = None
        self._cache: dict[FedConfig, History] = {}  # finished runs
        self._stopped: dict[FedConfig, Federation] = {}  # stopped midway: resumable
        self._stop_requested = False
        self._task: asyncio.Task | None = None
        self._counts: np.ndarray | None = None

        self.controls = {
            name: make(getattr(self._base, name))
            for group in CONTROLS.values()
            for name, make in group.items()
        }
        for name, control in self.controls.items():
            control.description = name
            control.style = _STYLE
            control.layout.width = "265px"
            if hasattr(control, "continuous_update"):
                control.continuous_update = False
            control.observe(self._on_change, names="value")
        self.compare = w.Checkbox(
            value=False,
            description="compare with plain FedAvg",
            indent=False,
            style=_STYLE,
            layout=w.Layout(width="auto"),
        )
        self.run_button = w.Button(
            description="Run", button_style="primary", icon="play"
        )
        self.stop_button = w.Button(description="Stop", icon="stop", disabled=True)
        self.clear_button = w.Button(description="Clear", icon="trash")
        self.run_button.on_click(self._on_run)
        self.stop_button.on_click(lambda _: self.stop())
        self.clear_button.on_click(lambda _: self.clear())
        self.status = w.Label("ready")
        self.error = w.HTML(layout=w.Layout(min_height="1.5em"))
        self.curves = _canvas((4.7, 3.3))
        self.heatmap = _canvas((3.5, 3.3))
        self._curves_ax = self.curves.figure.add_subplot()
        for widget, name in [
            (self.status, "status"),
            (self.error, "error"),
            (self.curves, "curves"),
            (self.heatmap, "heatmap"),
        ]:
            widget.add_class(f"fedlearn-{name}")  # stable selectors for browser tests

        groups = [
            w.VBox(
                [w.HTML(f"<b>{title}</b>"), *(self.controls[n] for n in names)],
                layout=w.Layout(margin="0 0.8em 0.5em 0"),
            )
            for title, names in CONTROLS.items()
        ]
        buttons = [self.run_button, self.stop_button, self.clear_button, self.compare]
        super().__init__(
            [
                w.HBox(groups, layout=w.Layout(flex_flow="row wrap")),
                w.HBox(buttons, layout=w.Layout(align_items="center")),
                self.status,
                self.error,
                w.HBox(
                    [self.curves, self.heatmap], layout=w.Layout(flex_flow="row wrap")
                ),
            ]
        )
        self.add_class("fedlearn-playground")
        self._draw_curves()
        self._on_change()

    # -- settings -------------------------------------------------------------

    @property
    def config(self) -> FedConfig:
        """The settings the controls show (raises ``ValueError`` if they clash)."""
        return self._base.replace(**{n: c.value for n, c in self.controls.items()})

    def _on_change(self, _change: Any = None) -> None:
        """Check the new settings and redraw the heatmap if the partition moved."""
        try:
            cfg = self.config
            counts = Federation(cfg, self.data).label_counts()
        except ValueError as err:
            self._show_error(err)
            return
        self._show_error(None)
        if self._counts is None or not np.array_equal(counts, self._counts):
            self._counts = counts
            self._draw_heatmap(cfg)

    def _show_error(self, err: Exception | str | None) -> None:
        """Show the core's message in the panel (a callback has no caller to tell)."""
        self.error.value = (
            ""
            if err is None
            else f'<span style="color:#c62828">{escape(str(err))}</span>'
        )

    # -- running --------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while a Run-button run trains in the background."""
        return self._task is not None

    def run(self) -> History | None:
        """Train the current settings and block until the run ends (or Stop).

        Returns the run's history, or None if the settings are invalid (the panel
        shows why).
        """
        if self.running:
            raise RuntimeError("a run is in progress; press Stop or wait for it to end")
        feds = self._start()
        if feds is None:
            return None
        try:
            while self._round(feds):
                self._show_progress()
        except DivergedError as err:
            self._show_error(err)
        finally:
            self._finish(feds)
        return self.history

    def _on_run(self, _button: Any = None) -> None:
        """The Run button: train in the background under an event loop, else block."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # plain Python, no kernel: nothing else to serve
            self.run()
            return
        feds = self._start()
        if feds is not None:
            self._task = loop.create_task(self._run_in_background(feds))

    async def _run_in_background(self, feds: list[Federation]) -> None:
        drawn = asyncio.Event()
        listener = self.curves.mpl_connect("draw_event", lambda _: drawn.set())
        try:
            while await asyncio.to_thread(self._round, feds):
                await self._frame_shown(drawn)
                self._show_progress()
        # Anything that goes wrong is shown in the panel: a callback has no caller.
        except Exception as err:
            _logger.exception("playground run failed")
            self._show_error(err if isinstance(err, DivergedError) else repr(err))
        finally:
            self.curves.mpl_disconnect(listener)
            self._finish(feds)

    async def _frame_shown(self, drawn: asyncio.Event) -> None:
        """Wait until the browser asked for the last frame, so each round gets one.

        The next round trains meanwhile; without a browser view there is no wait, and
        a view that never asks costs at most half a second per round.
        """
        if self.curves.syncing_data_url:  # no front-end has opened the canvas
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(drawn.wait(), timeout=0.5)
        drawn.clear()

    def stop(self) -> None:
        """End the run after the round in progress; what it computed stays."""
        self._stop_requested = True

    def clear(self) -> None:
        """Stop, and remove every run from the plot (cached results stay cached)."""
        self.stop()
        self.runs, self.history = [], None
        self._stopped.clear()
        self._draw_curves()
        self.status.value = "cleared"

    def _start(self) -> list[Federation] | None:
        """Put the run (and its plain-FedAvg twin) on the plot; return what to train."""
        try:
            cfg = self.config
            configs = [cfg]
            if self.compare.value and cfg.server_steps > 0:
                configs.append(cfg.replace(server_steps=0))
            feds = {
                c: self._stopped.get(c) or Federation(c, self.data)
                for c in configs
                if c not in self._cache
            }
        except ValueError as err:
            self._show_error(err)
            return None
        self._show_error(None)
        shown = {run.config for run in self.runs}
        for c in configs:
            if c not in shown:
                history = self._cache[c] if c in self._cache else feds[c].history
                self.runs.append(Run(c, history))
        self._stopped.update(feds)
        self.history = next(run.history for run in self.runs if run.config == cfg)
        self._stop_requested = False
        self.run_button.disabled, self.stop_button.disabled = True, False
        self._show_progress()
        return list(feds.values())

    def _round(self, feds: list[Federation]) -> bool:
        """Run one more round of every unfinished run; False once there is none left."""
        todo = [fed for fed in feds if not fed.finished]
        if self._stop_requested or not todo:
            return False
        for fed in todo:
            fed.step()
        return True

    def _finish(self, feds: list[Federation]) -> None:
        for fed in feds:
            if fed.finished:
                self._cache[fed.cfg] = fed.history
                self._stopped.pop(fed.cfg, None)
        self._task = None
        self.run_button.disabled, self.stop_button.disabled = False, True
        self._show_progress(done=True)

    def _show_progress(self, done: bool = False) -> None:
        self._draw_curves()
        run = next((r for r in self.runs if r.history is self.history), None)
        if run is None:
            return
        history, total = run.history, run.config.rounds
        text = f"round {len(history)}/{total}"
        if done:
            ended = "done" if run.config in self._cache else "stopped"
            label = run_labels([r.config for r in self.runs])[self.runs.index(run)]
            text += f" {ended} · {label}"
            if history:
                text += (
                    f" · accuracy {history.final_accuracy:.3f}"
                    f" (before adjustment {history[-1].aggregate_accuracy:.3f})"
                )
        self.status.value = text

    # -- figures --------------------------------------------------------------

    def _draw_curves(self) -> None:
        ax = self._curves_ax
        # Swap the lines, keep the axes: a new Axes costs ~30 ms, too slow per round.
        for artist in [*ax.lines, *filter(None, [ax.get_legend()])]:
            artist.remove()
        labels = run_labels([run.config for run in self.runs])
        rounds = max(
            (run.config.rounds for run in self.runs), default=self._base.rounds
        )
        histories = {
            label: run.history for label, run in zip(labels, self.runs, strict=True)
        }
        plot_histories(histories, ax, rounds=rounds)
        self.curves.draw_idle()

    def _draw_heatmap(self, cfg: FedConfig) -> None:
        fig = self.heatmap.figure
        fig.clear()
        ax = fig.add_subplot()
        plot_label_distribution(self._counts, ax)
        skew = (
            f", skew={cfg.skew:g}" if cfg.partition in ("dirichlet", "shards") else ""
        )
        ax.set_title(
            f"{cfg.partition}{skew}, {cfg.num_devices} devices", fontsize="medium"
        )
        self.heatmap.draw_idle()


class _Canvas(Canvas):
    """ipympl's canvas as a plain picture: no header, footer, toolbar or resize handle
    (set as defaults, so the browser never draws them before an update arrives)."""

    header_visible = Bool(False).tag(sync=True)
    footer_visible = Bool(False).tag(sync=True)
    toolbar_visible = Bool(False).tag(sync=True)
    resizable = Bool(False).tag(sync=True)


def _canvas(figsize: tuple[float, float]) -> Canvas:
    """An ipympl canvas widget for a new figure, whatever pyplot's backend is."""
    canvas = _Canvas(Figure(figsize=figsize, dpi=100, layout="constrained"))
    with warnings.catch_warnings():  # ipympl's Toolbar trips a traitlets deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        FigureManager(canvas, 0)
    canvas.layout.flex = "0 0 auto"  # as wide as the figure, not the row
    return canvas
