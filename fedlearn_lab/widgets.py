"""The playground: controls named after ``FedConfig`` fields, Run/Stop/Clear/Pin, live
curves, the partition as a heatmap and the published model's accuracy per device.
A thin panel: controls -> ``FedConfig.replace`` -> ``Federation`` -> ``plots``.

Under a running event loop (a Jupyter kernel) the Run button trains in a worker thread,
one round at a time, so the kernel keeps serving Stop clicks and the live figures;
``Playground.run()`` from code blocks until the run ends. One run at a time: a Run
click or ``run()`` while a run is in progress only says so.

Threads. JupyterLab 4 sends widget messages to a kernel subshell (its
``commsOverSubshells`` setting), and ipykernel hands each widget's messages to the
thread that last sent on it: the main shell or that subshell. So the panel's callbacks
(a slider moved, Run clicked) and ipympl's renders (the browser asks for a frame) can
run on two threads at once, while a run changes the figures. One lock, shared by the
panel and its canvases, is held by every callback, every change to a figure and every
render; the worker thread only trains, and hands its results to the event loop (and
Stop only sets a flag). The controls' messages are kept on one thread, in the
browser's order (see ``Playground._keep_messages_in_order``). Each round's frame and
the final one are pushed to the browser (rendered and sent at once), not left to a
request that the browser drops while it waits for an earlier image.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from typing import Any

import ipywidgets as w
import numpy as np
from ipympl.backend_nbagg import Canvas, FigureManager
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from traitlets import Bool

try:  # in a Jupyter kernel
    from ipykernel.kernelbase import Kernel
except ImportError:  # pragma: no cover - the playground needs a kernel to be seen
    Kernel = None

from . import (
    METHODS,
    Dataset,
    DivergedError,
    Federation,
    History,
    inactive_settings,
    load_digits,
    method_of,
)
from .config import (
    AGGREGATORS,
    MODELS,
    PARTITIONS,
    SERVER_OPTS,
    SERVER_SCHEDULES,
    SHARED_USES,
    FedConfig,
)
from .plots import (
    PALETTE,
    RUN_COLORS,
    plot_device_strip,
    plot_histories,
    plot_label_distribution,
    run_labels,
)

_logger = logging.getLogger(__name__)

_STYLE = {"description_width": "initial"}
_ALPHAS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
_RATES = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
_MUS = (0.0, 0.001, 0.01, 0.1, 1.0)
MAX_RECENT = 6  # unpinned runs kept on the plot
MAX_PINNED = len(RUN_COLORS) - MAX_RECENT  # so every run shown has its own colour
MAX_SEED = 2**53 - 1  # a browser shows integers exactly up to here
_FONT = {False: 11.0, True: 17.0}  # points, by the "large" setting
# Inches of the curves, the heatmap and the devices' strip; "large" is wider than tall,
# as the curves then take the panel's whole width on a 1024x768 projector.
_SIZES = {
    False: [(5.6, 3.5), (3.8, 2.7), (3.8, 1.9)],
    True: [(7.3, 4.0), (4.9, 3.5), (4.9, 2.5)],
}


def _serial(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run a callback holding the panel's lock, with the browser's messages for the
    controls routed to this thread (see the module docstring)."""

    @functools.wraps(method)
    def serial(self: Playground, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self._keep_messages_in_order()
            return method(self, *args, **kwargs)

    return serial


_NO_KERNEL = object()


def _message_thread() -> Any:
    """Which shell the kernel message being handled came to: a subshell's id, None
    for the main shell, or _NO_KERNEL outside a kernel."""
    if Kernel is None or not Kernel.initialized():
        return _NO_KERNEL
    header = Kernel.instance().get_parent().get("header")
    return _NO_KERNEL if not header else header.get("subshell_id")


def _int(low: int, high: int) -> Callable[[int], w.ValueWidget]:
    return lambda v: w.IntSlider(value=v, min=min(low, v), max=max(high, v))


def _float(low: float, high: float, step: float) -> Callable[[float], w.ValueWidget]:
    return lambda v: w.FloatSlider(
        value=v, min=min(low, v), max=max(high, v), step=step, readout_format=".3g"
    )


def _steps(options: tuple[float, ...]) -> Callable[[float], w.ValueWidget]:
    """A slider over round values spaced evenly on a log scale (plus the start
    value, so it is shown as given)."""
    return lambda v: w.SelectionSlider(
        options=[(f"{o:g}", o) for o in sorted({*options, v})], value=v
    )


def _choice(
    options: tuple[str, ...], notes: dict[str, str]
) -> Callable[[str], w.ValueWidget]:
    return lambda v: w.Dropdown(
        options=[(f"{o} · {notes[o]}" if o in notes else o, o) for o in options],
        value=v,
    )


@dataclass(frozen=True)
class Control:
    """How to build one control from its start value, and its tooltip."""

    make: Callable[[Any], w.ValueWidget]
    tip: str


_PARTITION_NOTES = {
    "iid": "random split",
    "dirichlet": "uneven classes",
    "shards": "few classes each",
    "natural": "the data's own split",
}
# The skew control follows the partition (the field is the same, its meaning not).
SKEW = {
    "dirichlet": Control(
        _steps(_ALPHAS),
        "Dirichlet α: how evenly each class is spread over the devices. Small α: "
        "each device holds mostly one or two classes and plain FedAvg struggles; "
        "large α: close to a random split.",
    ),
    "shards": Control(
        _int(1, 10),
        "Shards per device: the data is sorted by label and cut into shards, and each "
        "device gets this many (McMahan et al. 2017), so it sees about as many "
        "classes. Fewer shards: harder for plain FedAvg.",
    ),
}
# One line per FedConfig field the panel controls, grouped as shown; the label is the
# field name. A new field needs one line here.
CONTROLS: dict[str, dict[str, Control]] = {
    "devices": {
        "num_devices": Control(
            _int(1, 200),
            "How many devices (phones, hospitals, ...) hold the training data. "
            "More devices: less data on each.",
        ),
        "participation": Control(
            _float(0.01, 1.0, 0.01),
            "Share of the devices the server picks each round. Higher: a steadier "
            "curve, but each round costs more.",
        ),
        "partition": Control(
            _choice(PARTITIONS, _PARTITION_NOTES),
            "How the data is split over the devices: iid at random; dirichlet and "
            "shards give each device a skewed mix of classes (set by skew); natural "
            "is the dataset's own split. The heatmap shows the result.",
        ),
        "skew": SKEW["dirichlet"],
    },
    "local training": {
        "local_epochs": Control(
            _int(1, 20),
            "Passes each picked device makes over its own data per round. More: "
            "faster progress, but on skewed data the devices drift apart.",
        ),
        "local_lr": Control(
            _steps(_RATES),
            "Learning rate of the devices' SGD. Too high: the run diverges; too "
            "low: slow progress.",
        ),
        "model": Control(
            _choice(
                MODELS,
                {"logreg": "linear", "mlp": "one hidden layer", "cnn": "small CNN"},
            ),
            "The model every device trains: logistic regression, a small MLP or a "
            "small convolutional network.",
        ),
        "rounds": Control(
            _int(1, 100),
            "Rounds to train. A round: pick devices, train them locally, average "
            "their models, adjust on the shared data.",
        ),
        "seed": Control(
            lambda v: w.IntText(value=v),
            "Random seed: the same seed gives the same run. Change it to see how "
            "much of a difference between two runs is luck.",
        ),
    },
    "server adjustment": {
        "shared_fraction": Control(
            _float(0.0, 0.5, 0.01),
            "Share of the training data the server keeps as its shared dataset "
            "(class-balanced). 0: no shared data, so plain FedAvg only.",
        ),
        "shared_use": Control(
            _choice(
                SHARED_USES,
                {
                    "adjust": "server steps",
                    "hybrid": "Hybrid-FL",
                    "data_sharing": "devices get a copy",
                },
            ),
            "How the shared dataset is used. adjust: the server takes SGD steps on "
            "it after averaging. hybrid: the server trains on it like one more "
            "participant (Hybrid-FL). data_sharing: every device gets a copy.",
        ),
        "server_schedule": Control(
            _choice(
                SERVER_SCHEDULES,
                {"fixed": "server_steps each round", "feddu": "FedDU decides"},
            ),
            "How many server steps each round. fixed: server_steps every round. "
            "feddu: FedDU picks the number from the model's accuracy on the shared "
            "data and the label divergence of the picked devices.",
        ),
        "server_steps": Control(
            _int(0, 50),
            "SGD steps the server takes on the shared dataset after averaging. 0: "
            "plain FedAvg. Many: the model starts to fit the small shared dataset.",
        ),
        "server_lr": Control(
            _steps(_RATES), "Learning rate of the server's steps on the shared data."
        ),
        "aggregator": Control(
            _choice(
                AGGREGATORS,
                {
                    "fedavg": "weighted mean",
                    "median": "median",
                    "trimmed_mean": "mean, no extremes",
                    "krum": "most central",
                },
            ),
            "How the server combines the devices' models. fedavg: their mean, "
            "weighted by data size. median: the median of each weight. trimmed_mean: "
            "the mean without the highest and lowest values. krum: the one model "
            "closest to the others. The last three resist attacking devices.",
        ),
    },
    "other remedies": {
        "proximal_mu": Control(
            _steps(_MUS),
            "FedProx: each device's loss gets mu/2 times the squared distance to the "
            "global model, so it drifts less on its own skewed data. 0: off. Large: "
            "the devices barely move.",
        ),
        "scaffold": Control(
            lambda v: w.Checkbox(value=v, indent=False),
            "SCAFFOLD: every local step is corrected by control variates (the "
            "server's c minus the device's c_i) that cancel the device's drift. "
            "Each device keeps its c_i; the messages carry twice the bytes.",
        ),
        "server_opt": Control(
            _choice(
                SERVER_OPTS,
                {
                    "none": "plain average",
                    "adam": "FedAdam",
                    "yogi": "FedYogi",
                    "adagrad": "FedAdagrad",
                },
            ),
            "A server optimiser fed the average change of the round (Reddi et al. "
            "2021): adam, yogi or adagrad take adaptive steps; server_opt_lr sets "
            "their rate. none: the average is the new model.",
        ),
        "server_opt_lr": Control(
            _steps(_RATES),
            "Rate of the server optimiser (FedAdam, FedYogi, FedAdagrad).",
        ),
    },
}
_BUTTON_TIPS = {
    "run": "Train the settings above; the curve grows round by round. Settings "
    "already run come back at once.",
    "stop": "End the run after the round in progress; what it computed stays, and "
    "Run continues it.",
    "clear": "Remove every run from the plot (results stay cached).",
    "pin": f"Keep the current run on the plot; only the last {MAX_RECENT} runs that "
    f"are not pinned stay (at most {MAX_PINNED} pins).",
    "compare": "Also run the same settings as plain FedAvg (no use of the shared "
    "dataset), to see what the method adds.",
    "large": "Bigger fonts and figures, for a projector.",
}
# Everything the panel needs that ipywidgets' own styles do not give: a status line
# that wraps, figures that follow the available width, the "large" fonts.
_CSS = """<style>
.fedlearn-playground .fedlearn-status { white-space: normal; height: auto;
  line-height: 1.4; overflow: visible; font-weight: 600; }
.fedlearn-playground .fedlearn-error { min-height: 1.4em; }
.fedlearn-playground .fedlearn-figure { min-width: 0; margin: 0; }
.fedlearn-playground .fedlearn-figure .jupyter-matplotlib-figure,
.fedlearn-playground .fedlearn-figure .jupyter-matplotlib-canvas-container,
.fedlearn-playground .fedlearn-figure .jupyter-matplotlib-canvas-div {
  width: 100% !important; height: auto !important; margin: 0 !important;
  box-sizing: border-box; }
.fedlearn-playground .fedlearn-figure canvas {
  width: 100% !important; height: auto !important; }
.fedlearn-playground .fedlearn-figure canvas:first-child {
  position: relative !important; }
.fedlearn-playground .fedlearn-figure canvas + canvas { display: none !important; }
.fedlearn-playground .fedlearn-anchor { outline: none;
  scroll-margin: 8px 0 calc(100vh - 200px) 0; }
.fedlearn-playground .fedlearn-runs { font-size: var(--jp-widgets-font-size); }
.fedlearn-runs .fedlearn-run { line-height: 1.5; }
.fedlearn-playground .fedlearn-info { width: 1.5em; margin: 0 0 0 0.3em; }
.fedlearn-playground .fedlearn-tip { display: inline-block; width: 1.2em;
  line-height: 1.2em; border-radius: 50%; text-align: center; cursor: help;
  font-size: 0.85em; color: var(--jp-ui-font-color2);
  border: 1px solid var(--jp-border-color1); }
.fedlearn-runs .fedlearn-swatch { display: inline-block; width: 1.6em; height: 0.3em;
  vertical-align: middle; margin-right: 0.4em; }
.fedlearn-playground .fedlearn-main { flex: 1 1 420px; min-width: 0;
  margin-right: 0.6em; }
.fedlearn-playground .fedlearn-side { flex: 1 1 260px; max-width: 460px;
  min-width: 0; }
.fedlearn-playground.fedlearn-large { --jp-widgets-font-size: 18px;
  --jp-widgets-inline-height: 34px; }
.fedlearn-playground.fedlearn-large .fedlearn-main { flex-basis: 100%;
  margin-right: 0; }
.fedlearn-playground.fedlearn-large .fedlearn-side { max-width: 640px; }
.fedlearn-playground.fedlearn-large .fedlearn-status { font-size: 20px; }
</style>"""


@dataclass(frozen=True, eq=False)
class Run:
    """One run on the plot: its settings, its (possibly still growing) history and
    its colour, kept for as long as it is shown."""

    config: FedConfig
    history: History
    color: str


class Playground(w.VBox):
    """Move the controls, press Run, watch the accuracy curves grow round by round.

    ``Playground(data=None, **config)``: ``data`` defaults to :func:`load_digits`,
    ``config`` sets any ``FedConfig`` field's start value (shown as given; a value
    the panel cannot show or run raises ``ValueError``). ``.config`` is the current
    settings, ``.history`` the last run, ``.runs`` the runs on the plot (the last
    six, plus pinned ones); ``.run()`` trains from code. Finished runs are cached per
    config, so going back is instant.
    """

    def __init__(self, data: Dataset | None = None, **config: Any) -> None:
        start = FedConfig(**config)
        self.data = data if data is not None else load_digits()
        if start.seed > MAX_SEED:
            raise ValueError(
                f"seed must be an integer in [0, 2**53 - 1] for the playground (a "
                f"browser shows larger integers inexactly), got {start.seed}"
            )
        Federation(start, self.data)  # setup errors (the partition, ...) raise here
        self._base = start
        # Held by every callback, every change to a figure and every render: see the
        # module docstring.
        self._lock = threading.RLock()
        self._busy = False
        self.runs: list[Run] = []
        self.history: History | None = None
        self._cache: dict[FedConfig, History] = {}  # finished runs
        self._stopped: dict[FedConfig, Federation] = {}  # stopped midway: resumable
        self._device_accuracy: dict[FedConfig, list[float]] = {}
        self._pinned: set[FedConfig] = set()
        self._stop_requested = False
        self._task: asyncio.Task | None = None
        self._counts: np.ndarray | None = None
        self._quiet = False  # True while the panel sets its own controls
        self._large = False
        self._shown = False  # whether a browser has shown the panel yet
        self._routed = _message_thread()  # where the controls' messages go

        self._build_controls(start)
        self._build_buttons()
        self.status = w.Label("")
        self.error = w.HTML()
        self.run_list = w.HTML()
        self._css = w.HTML(_CSS)
        self.curves = _canvas(self._lock, layout="constrained")
        self.heatmap = _canvas(self._lock)  # axes placed by _strip_axes
        self.devices = _canvas(self._lock)
        self._curves_ax = self.curves.figure.add_subplot()
        self._size_figures()
        for widget, name in [
            (self.status, "status"),
            (self.error, "error"),
            (self.run_list, "runs"),
            (self.curves, "curves"),
            (self.heatmap, "heatmap"),
            (self.devices, "devices"),
        ]:
            widget.add_class(f"fedlearn-{name}")  # stable selectors for browser tests
        for canvas in (self.curves, self.heatmap, self.devices):
            canvas.add_class("fedlearn-figure")
        super().__init__(self._layout())
        self.add_class("fedlearn-playground")
        for part in self._placing():  # the browser counts each part's views in the page
            part._view_count = 0
            part.observe(self._bring_into_view, "_view_count")
        self._draw_curves()
        self._show_runs()
        self._on_change()

    # -- building -------------------------------------------------------------

    def _build_controls(self, start: FedConfig) -> None:
        partitions = tuple(
            p
            for p in PARTITIONS
            if p != "natural" or self.data.natural_partition is not None
        )
        shards = start.partition == "shards"
        self._skews = {
            "dirichlet": SKEW["dirichlet"].make(
                FedConfig.skew if shards else start.skew
            ),
            "shards": SKEW["shards"].make(int(start.skew) if shards else 2),
        }
        self._tips = {kind: spec.tip for kind, spec in SKEW.items()}
        self.controls: dict[str, w.ValueWidget] = {}
        for group in CONTROLS.values():
            for name, spec in group.items():
                if name == "partition":
                    spec = Control(_choice(partitions, _PARTITION_NOTES), spec.tip)
                if name == "skew":
                    self.controls[name] = self._skews[
                        "shards" if shards else "dirichlet"
                    ]
                else:
                    self.controls[name] = spec.make(getattr(start, name))
                    self._tips[name] = spec.tip
        for name, control in self._widgets():
            control.description = "skew" if name in SKEW else name
            control.tooltip = self._tips[name]
            control.style = _STYLE
            control.layout.width = "100%"
            if hasattr(control, "continuous_update"):
                control.continuous_update = False
            control.observe(self._on_change, names="value")
        self._skew_slot = w.Box([self.controls["skew"]])
        # ipywidgets shows no tooltip for a dropdown (or checkbox) with a description:
        # a ? beside it carries it.
        self._infos = {
            name: w.HTML(_info(self._tips[name]))
            for name, control in self.controls.items()
            if isinstance(control, w.Dropdown)
        }
        for name, info in self._infos.items():
            self.controls[name].layout.width = "calc(100% - 1.8em)"
            info.add_class("fedlearn-info")

    def _widgets(self) -> list[tuple[str, w.ValueWidget]]:
        """Every control, the skew ones by kind (shown or not)."""
        fields = [(n, c) for n, c in self.controls.items() if n != "skew"]
        return fields + list(self._skews.items())

    def _build_buttons(self) -> None:
        tips = _BUTTON_TIPS
        self.run_button = w.Button(
            description="Run", button_style="primary", icon="play", tooltip=tips["run"]
        )
        self.stop_button = w.Button(
            description="Stop", icon="stop", disabled=True, tooltip=tips["stop"]
        )
        self.clear_button = w.Button(
            description="Clear", icon="trash", tooltip=tips["clear"]
        )
        self.pin_button = w.ToggleButton(
            description="Pin", icon="thumb-tack", tooltip=tips["pin"]
        )
        self.compare = w.Checkbox(
            value=False,
            description="compare with plain FedAvg",
            indent=False,
            style=_STYLE,
            layout=w.Layout(width="auto"),
            tooltip=tips["compare"],
        )
        self.large = w.Checkbox(
            value=False,
            description="large",
            indent=False,
            style=_STYLE,
            layout=w.Layout(width="auto"),
            tooltip=tips["large"],
        )
        for button in (self.run_button, self.stop_button, self.clear_button):
            button.layout.width = "auto"
        self.pin_button.layout.width = "auto"
        self.run_button.on_click(self._on_run)
        self.stop_button.on_click(lambda _: self.stop())
        self.clear_button.on_click(lambda _: self.clear())
        self.pin_button.observe(self._on_pin, names="value")
        self.compare.observe(lambda _: self._on_change(), names="value")
        self.large.observe(self._on_large, names="value")

    def _layout(self) -> list[w.Widget]:
        """Buttons and status on top, then the figures, then the controls."""
        infos = [w.HTML(_info(b.tooltip)) for b in (self.compare, self.large)]
        for info in infos:
            info.add_class("fedlearn-info")
        bar = w.HBox(
            [
                self.run_button,
                self.stop_button,
                self.clear_button,
                self.pin_button,
                self.compare,
                infos[0],
                self.large,
                infos[1],
            ],
            layout=w.Layout(flex_flow="row wrap", align_items="center"),
        )
        self.run_button.add_class("fedlearn-anchor")  # see _bring_into_view
        main = w.VBox([self.curves, self.run_list])
        side = w.VBox([self.heatmap, self.devices])  # device columns line up
        main.add_class("fedlearn-main")
        side.add_class("fedlearn-side")
        groups = []
        for title, names in CONTROLS.items():
            items = [
                self._skew_slot if n == "skew" else self.controls[n] for n in names
            ]
            items = [
                w.HBox([item, self._infos[n]]) if n in self._infos else item
                for n, item in zip(names, items, strict=True)
            ]
            groups.append(
                w.VBox(
                    [w.HTML(f"<b>{title}</b>"), *items],
                    layout=w.Layout(flex="1 1 250px", margin="0 0.8em 0.4em 0"),
                )
            )
        return [
            self._css,
            bar,
            self.status,
            self.error,
            w.HBox([main, side], layout=w.Layout(flex_flow="row wrap")),
            w.HBox(groups, layout=w.Layout(flex_flow="row wrap")),
        ]

    def _keep_messages_in_order(self) -> None:
        """Have the browser's messages for every control come to this thread.

        ipykernel hands a widget's messages to the thread that last sent on it (the
        main shell, or the subshell JupyterLab uses for widgets). Left alone, a
        slider moved just before a Run click could be handled after it, on the other
        thread, and the run would use the old value. A no-op update on each control
        from here routes them all to one thread, in the browser's order.
        """
        where = _message_thread()
        if where is _NO_KERNEL or where == self._routed:
            return
        self._routed = where
        for _, control in self._widgets():
            control.send_state("_view_count")
        for widget in (self.run_button, self.stop_button, self.clear_button):
            widget.send_state("_view_count")
        for widget in (self.pin_button, self.compare, self.large):
            widget.send_state("_view_count")

    def _placing(self) -> list[w.DOMWidget]:
        """The parts that place the panel on the page: its CSS, the Run button and
        the three figures (their script loads last)."""
        return [self._css, self.run_button, self.curves, self.heatmap, self.devices]

    @_serial
    def _bring_into_view(self, change: Any = None) -> None:
        """Scroll the panel into view the first time a browser shows it (after Run
        All, JupyterLab has scrolled to its cell before the panel appeared below):
        focusing the Run button scrolls the page so that it, and the room its CSS
        scroll margin asks for below it, are visible.

        Only once every part that places the panel is in the page: focus sent
        sooner is lost (no Run button yet) or scrolls a page still too short to
        bring the panel up (no figures yet), and the panel stays below the fold.
        """
        if not self._shown and all(part._view_count for part in self._placing()):
            self._shown = True
            self.run_button.focus()

    # -- settings -------------------------------------------------------------

    @property
    def config(self) -> FedConfig:
        """The settings the controls show (raises ``ValueError`` if they clash)."""
        return self._base.replace(**{n: c.value for n, c in self.controls.items()})

    @property
    def device_accuracy(self) -> list[float] | None:
        """The published model's accuracy on each device's own data, for the current
        settings' run (None until it has run)."""
        try:
            return self._device_accuracy.get(self.config)
        except ValueError:
            return None

    @_serial
    def _on_change(self, change: Any = None) -> None:
        """Check the new settings; show what they do, or what to change."""
        if self._quiet:
            return
        if change is not None and change.owner is self.controls["partition"]:
            self._follow_partition(change.new)
        try:
            cfg = self.config
            counts = Federation(cfg, self.data).label_counts()
        except ValueError as err:
            self._invalid(err)
            return
        self._show_error(None)
        self._disable_inactive(inactive_settings(cfg))
        if self._counts is None or not np.array_equal(counts, self._counts):
            self._counts = counts
            self._draw_heatmap(cfg)
        elif self._is_greyed(self.heatmap):
            self._draw_heatmap(cfg)
        self._draw_devices(cfg)
        if not self.running:
            self.status.value = self._idle_status(cfg)

    def _follow_partition(self, partition: str) -> None:
        """Show the skew control that means something for ``partition``."""
        kind = "shards" if partition == "shards" else "dirichlet"
        self.controls["skew"] = self._skews[kind]
        self._skew_slot.children = (self._skews[kind],)

    def _disable_inactive(self, why: dict[str, str]) -> None:
        """Disable the controls that do nothing under these settings, saying why."""
        for name, control in self._widgets():
            tip = self._tips[name]
            reason = why.get("skew" if name in SKEW else name)
            control.disabled = reason is not None
            control.tooltip = f"Has no effect now: {reason}. {tip}" if reason else tip
            if name in self._infos:
                self._infos[name].value = _info(control.tooltip)

    def _invalid(self, err: Exception) -> None:
        """Settings that cannot run: say what to change, grey out what is stale."""
        self._show_error(err)
        if not self.running:
            self.status.value = ""
        for canvas in (self.heatmap, self.devices):
            self._grey(canvas, "settings invalid: see the message above")

    def _show_error(self, err: Exception | str | None) -> None:
        """Show the core's message in the panel (a callback has no caller to tell),
        with the control to change when the message names one."""
        if err is None:
            self.error.value = ""
            return
        text = str(err)
        hint = ""
        if isinstance(err, ValueError) and (m := re.match(r"(\w+) must be", text)):
            if m[1] in self.controls:
                hint = f". Change <b>{m[1]}</b>."
        self.error.value = f'<span style="color:#c62828">⚠ {escape(text)}{hint}</span>'

    def _notice(self, text: str) -> None:
        self.error.value = f'<span style="color:#8a5a00">{escape(text)}</span>'

    def _idle_status(self, cfg: FedConfig) -> str:
        run = next((r for r in self.runs if r.config == cfg), None)
        if run is not None and len(run.history):
            return self._progress_text(run, done=True)
        return "ready: press Run to train these settings"

    # -- running --------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while a run trains (from the Run button or ``run()``)."""
        return self._busy

    def run(self) -> History | None:
        """Train the current settings and block until the run ends (or Stop).

        Returns the run's history, or None if the settings are invalid or a run is
        already in progress (the panel says which).
        """
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
        try:
            # The worker thread only trains; the figures change on the loop's thread.
            while await asyncio.to_thread(self._round, feds):
                self._show_progress()
        # Anything that goes wrong is shown in the panel: a callback has no caller.
        except Exception as err:
            _logger.exception("playground run failed")
            self._show_error(err if isinstance(err, DivergedError) else repr(err))
        finally:
            self._finish(feds)

    def stop(self) -> None:
        """End the run after the round in progress; what it computed stays."""
        self._stop_requested = True

    @_serial
    def clear(self) -> None:
        """Stop, and remove every run from the plot (cached results stay cached)."""
        self.stop()
        self.runs, self.history = [], None
        self._pinned.clear()
        self._stopped.clear()
        self._draw_curves()
        self._show_runs()
        self.status.value = "cleared"

    @_serial
    def _start(self) -> list[Federation] | None:
        """Claim the panel, put the run (and its plain-FedAvg twin) on the plot, and
        return what to train; None if a run is in progress or the settings clash."""
        if self._busy:
            self._notice(
                "A run is in progress: wait for it to end, or press Stop first."
            )
            return None
        self._busy = True
        try:
            cfg = self.config
            configs = [cfg, *filter(None, [self._twin(cfg)])]
            feds = {
                c: self._stopped.get(c) or Federation(c, self.data)
                for c in configs
                if c not in self._cache
            }
        except ValueError as err:
            self._show_error(err)
            self._busy = False
            return None
        self._show_error(None)
        self._stopped.update(feds)
        histories = {
            c: self._cache[c] if c in self._cache else feds[c].history for c in configs
        }
        self._put_on_plot(histories)
        self.history = histories[cfg]
        self._stop_requested = False
        self.run_button.disabled, self.stop_button.disabled = True, False
        self._show_progress()
        return list(feds.values())

    def _twin(self, cfg: FedConfig) -> FedConfig | None:
        """The plain-FedAvg run to compare with, if asked for and different."""
        if not self.compare.value:
            return None
        twin = cfg.replace(**METHODS["fedavg"])
        return None if twin == cfg else twin

    def _round(self, feds: list[Federation]) -> bool:
        """Run one more round of every unfinished run; False once there is none left.

        Runs in a worker thread under an event loop: it touches no widget or figure.
        """
        todo = [fed for fed in feds if not fed.finished]
        if self._stop_requested or not todo:
            return False
        for fed in todo:
            fed.step()
        return True

    @_serial
    def _finish(self, feds: list[Federation]) -> None:
        try:
            for fed in feds:
                if fed.finished:
                    self._cache[fed.cfg] = fed.history
                    self._stopped.pop(fed.cfg, None)
                if len(fed.history):
                    self._device_accuracy[fed.cfg] = fed.device_accuracy()
            self._task = None
            self.run_button.disabled, self.stop_button.disabled = False, True
            self._show_progress(done=True)
            try:
                self._draw_devices(self.config)
            except ValueError:  # the controls moved to invalid settings meanwhile
                pass
        finally:
            self._busy = False

    @_serial
    def _show_progress(self, done: bool = False) -> None:
        """Redraw the curves and the run list; say how far the current run is."""
        self._draw_curves()
        self._show_runs()
        run = self._current_run()
        if run is not None:
            self.status.value = self._progress_text(run, done)

    def _progress_text(self, run: Run, done: bool) -> str:
        history, total = run.history, run.config.rounds
        text = f"round {len(history)}/{total}"
        if done:
            ended = "done" if run.config in self._cache else "stopped"
            text += f" {ended} · {self._labels()[self.runs.index(run)]}"
            if history:
                text += f" · accuracy {history.final_accuracy:.3f}"
                before = history[-1].aggregate_accuracy
                if before != history.final_accuracy:
                    text += f" (before adjustment {before:.3f})"
        return text

    def _current_run(self) -> Run | None:
        return next((r for r in self.runs if r.history is self.history), None)

    def _labels(self) -> list[str]:
        return run_labels([run.config for run in self.runs])

    # -- the runs on the plot ------------------------------------------------------

    def _put_on_plot(self, histories: dict[FedConfig, History]) -> None:
        """Show these runs last (newest); keep the pinned runs and the most recent
        others, up to MAX_RECENT unpinned; every run keeps its colour."""
        shown = {run.config: run for run in self.runs}
        others = [run for run in self.runs if run.config not in histories]
        free = MAX_RECENT - sum(c not in self._pinned for c in histories)
        recent = [run for run in others if run.config not in self._pinned]
        dropped = {id(run) for run in recent[: max(0, len(recent) - free)]}
        kept = [run for run in others if id(run) not in dropped]
        # Runs shown already keep their colour; new ones take a colour none has.
        used = {run.color for run in kept} | {
            shown[cfg].color for cfg in histories if cfg in shown
        }
        new = []
        for cfg, history in histories.items():
            color = shown[cfg].color if cfg in shown else self._free_color(cfg, used)
            used.add(color)
            new.append(Run(cfg, history, color))
        self.runs = kept + new

    @staticmethod
    def _free_color(cfg: FedConfig, used: set[str]) -> str:
        """The method's palette colour if no run shown has it, else the next free."""
        preferred = PALETTE.get(method_of(cfg))
        if preferred is not None and preferred not in used:
            return preferred
        return next(c for c in RUN_COLORS if c not in used)

    @_serial
    def pin(self, pinned: bool = True) -> None:
        """Keep the current run on the plot (``pinned=False`` lets it go again)."""
        run = self._current_run()
        if run is None:
            self._notice("Nothing to pin yet: press Run first.")
        elif pinned and run.config not in self._pinned:
            if len(self._pinned) >= MAX_PINNED:
                self._notice(f"At most {MAX_PINNED} runs can be pinned: unpin one.")
            else:
                self._pinned.add(run.config)
        elif not pinned and run.config in self._pinned:
            self._pinned.discard(run.config)
            self._put_on_plot({run.config: run.history})
        self._show_progress(done=not self.running)

    def _on_pin(self, change: Any) -> None:
        if not self._quiet:
            self.pin(change.new)

    def _show_runs(self) -> None:
        """The run list under the curves: each run's colour, name, accuracy, pin."""
        current = self._current_run()
        rows = []
        for run, label in zip(self.runs, self._labels(), strict=True):
            accuracy = f" · {run.history.final_accuracy:.3f}" if run.history else ""
            pin = " · pinned" if run.config in self._pinned else ""
            text = f"{escape(label)}{accuracy}{pin}"
            if run is current:
                text = f"<b>{text}</b>"
            swatch = f'<span class="fedlearn-swatch" style="background:{run.color}">'
            rows.append(f'<div class="fedlearn-run">{swatch}</span>{text}</div>')
        head = (
            "<i>solid: after the server adjustment · dashed: before it</i>"
            if self.runs
            else "<i>no runs yet: press Run</i>"
        )
        self.run_list.value = head + "".join(rows)
        self._quiet = True
        try:
            self.pin_button.value = current is not None and (
                current.config in self._pinned
            )
        finally:
            self._quiet = False

    # -- figures --------------------------------------------------------------

    @_serial
    def _on_large(self, change: Any) -> None:
        """Bigger fonts and figures for a projector (or back)."""
        self._large = bool(change.new)
        if self._large:
            self.add_class("fedlearn-large")
        else:
            self.remove_class("fedlearn-large")
        self._size_figures()
        self._draw_curves()
        self._counts = None  # redraw the heatmap and the devices
        self._on_change()

    def _size_figures(self) -> None:
        with self._lock:
            for canvas, size in zip(
                (self.curves, self.heatmap, self.devices),
                _SIZES[self._large],
                strict=True,
            ):
                canvas.figure.set_size_inches(size)
                canvas.manager.resize(*canvas.figure.bbox.size)

    def _draw_curves(self) -> None:
        with self._lock:
            ax = self._curves_ax
            # Swap the lines, keep the axes (a new Axes costs ~30 ms).
            for artist in [*ax.lines, *filter(None, [ax.get_legend()])]:
                artist.remove()
            rounds = max(
                (run.config.rounds for run in self.runs), default=self._base.rounds
            )
            shown = dict(zip(self._labels(), self.runs, strict=True))
            current = self._current_run()
            shown = {  # the current run last, so on top of the others
                label: run
                for label, run in sorted(shown.items(), key=lambda x: x[1] is current)
            }
            plot_histories(
                {label: run.history for label, run in shown.items()},
                ax,
                rounds=rounds,
                colors={label: run.color for label, run in shown.items()},
                legend=False,
            )
            _style(self.curves.figure, self._large)
            self.curves.push()

    def _strip_axes(self, fig: Figure, colorbar: bool) -> tuple[Any, Any]:
        """Axes at the same place in the heatmap and the devices figure, so their
        device columns line up (and room on the right for the colour bar)."""
        width, height = fig.get_size_inches()
        font = _FONT[self._large] / 72  # inches
        left, right = 0.25 + 2.6 * font, 0.45 + 2.4 * font
        bottom, top = 0.15 + 2.4 * font, 0.12 + 1.8 * font
        rect = [left / width, bottom / height, 1 - (left + right) / width]
        rect.append(1 - (bottom + top) / height)
        ax = fig.add_axes(rect)
        if not colorbar:
            return ax, None
        bar = [(width - right + 0.12) / width, rect[1], 0.13 / width, rect[3]]
        return ax, fig.add_axes(bar)

    def _draw_heatmap(self, cfg: FedConfig) -> None:
        with self._lock:
            fig = self.heatmap.figure
            fig.clear()
            ax, cax = self._strip_axes(fig, colorbar=True)
            plot_label_distribution(self._counts, ax, cax=cax)
            ax.set_title(_partition_title(cfg))
            _style(fig, self._large)
            self.heatmap.push()

    def _draw_devices(self, cfg: FedConfig) -> None:
        """The published model's accuracy on each device (and the twin's, as ticks),
        in the heatmap's device order."""
        accuracy, colors = {}, {}
        for c in (cfg, self._twin(cfg)):
            if c is not None and c in self._device_accuracy:
                run = next((r for r in self.runs if r.config == c), None)
                name = "plain FedAvg" if c is not cfg else "this run"
                accuracy[name] = self._device_accuracy[c]
                colors[name] = run.color if run else PALETTE[method_of(c)]
        with self._lock:
            fig = self.devices.figure
            fig.clear()
            ax, _ = self._strip_axes(fig, colorbar=False)
            plot_device_strip(accuracy, ax, colors=colors)
            ax.set_xlim(-0.5, min(cfg.num_devices, 50) - 0.5)
            if not accuracy:
                ax.text(
                    0.5,
                    0.5,
                    "Run to see how well the published\nmodel does on each device",
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                    color="0.35",
                )
            ax.set_title("published model, per device")
            _style(fig, self._large)
            self.devices.push()

    def _grey(self, canvas: _Canvas, note: str) -> None:
        """Cover a figure whose settings no longer hold with a note."""
        with self._lock:
            if self._is_greyed(canvas):
                return
            fig = canvas.figure
            veil = Rectangle(
                (0, 0), 1, 1, transform=fig.transFigure, color="white", alpha=0.8
            )
            veil.set_gid("fedlearn-grey")
            fig.add_artist(veil)
            fig.text(0.5, 0.5, note, ha="center", va="center", wrap=True, color="0.2")
            canvas.push()

    @staticmethod
    def _is_greyed(canvas: _Canvas) -> bool:
        return any(a.get_gid() == "fedlearn-grey" for a in canvas.figure.artists)


def _info(tip: str) -> str:
    return f'<span class="fedlearn-tip" title="{escape(tip)}">?</span>'


def _partition_title(cfg: FedConfig) -> str:
    devices = f"{cfg.num_devices} devices"
    if cfg.partition == "dirichlet":
        return f"dirichlet α={cfg.skew:g} · {devices}"
    if cfg.partition == "shards":
        return f"shards: {int(cfg.skew)} per device · {devices}"
    return f"{cfg.partition} · {devices}"


def _style(fig: Figure, large: bool) -> None:
    """One font size for a figure's labels and titles (ticks a little smaller), and
    thicker lines on a projector."""
    size = _FONT[large]
    for ax in fig.axes:
        ax.tick_params(labelsize=size * 0.9)
        for text in (ax.xaxis.label, ax.yaxis.label, ax.title):
            text.set_fontsize(size)
        if large:
            for line in ax.lines:
                line.set_linewidth(2.5)
                line.set_markersize(9)
    for text in fig.texts:
        text.set_fontsize(size)


class _Canvas(Canvas):
    """ipympl's canvas as a plain picture: no header, footer, toolbar or resize handle
    (set as defaults, so the browser never draws them before an update arrives).

    Renders hold the panel's lock, whichever thread asks: the browser's requests
    arrive on the thread that serves widget messages (a subshell in JupyterLab).
    """

    header_visible = Bool(False).tag(sync=True)
    footer_visible = Bool(False).tag(sync=True)
    toolbar_visible = Bool(False).tag(sync=True)
    resizable = Bool(False).tag(sync=True)

    def __init__(self, figure: Figure, lock: threading.RLock) -> None:
        self._lock = lock
        super().__init__(figure)

    def draw(self) -> None:
        """Render and send the frame, holding the lock.

        Always a full frame, never a diff: the browser keeps one image loading, so
        a frame that arrives right after another replaces it unseen, and a lost diff
        would leave the picture half old.
        """
        with self._lock:
            self._force_full = True
            super().draw()

    def _handle_message(self, object: Any, content: dict, buffers: list) -> None:
        # draw, refresh and resize requests from the browser read or change the figure
        with self._lock:
            super()._handle_message(object, content, buffers)

    def push(self) -> None:
        """Send the current picture now if a browser shows the canvas (else there is
        nobody to send it to: it goes out when a view opens and asks)."""
        with self._lock:
            if self.syncing_data_url:  # no front-end has opened the canvas yet
                self.draw_idle()
            else:
                self.draw()


def _canvas(lock: threading.RLock, layout: str | None = None) -> _Canvas:
    """An ipympl canvas widget for a new figure, whatever pyplot's backend is."""
    canvas = _Canvas(Figure(dpi=100, layout=layout), lock)
    with warnings.catch_warnings():  # ipympl's Toolbar trips a traitlets deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        FigureManager(canvas, 0)
    return canvas
