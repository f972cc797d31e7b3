"""Experiments on Flower's Simulation Engine (Ray), in this process."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from ..config import FedConfig
from ..data import Dataset, load_digits
from ..history import History
from ..state import make_setup
from .apps import OnRound, client_app, find_devices, serve
from .deploy import check_mode, server_data_of, server_setup


def run_simulation(
    cfg: FedConfig,
    data: Dataset | None = None,
    on_round: OnRound | None = None,
    *,
    model_out: str | Path | None = None,
    mode: str = "lab",
    devices: ClientApp | None = None,
    backend_config: dict[str, Any] | None = None,
    verbose: bool = False,
) -> History:
    """Run one experiment on Flower's Simulation Engine; returns its ``History``.

    One virtual SuperNode per device; Ray runs them in workers of one CPU each. The
    ServerApp runs in a thread of this process, which calls ``on_round(record)``.
    ``RoundRecord.seconds`` is each round's wall-clock time; Ray's start-up (15-60 s
    on 2 cores) comes before the first round. If ``model_out`` is set, the published
    model is saved there (read it with :func:`fedlearn_lab.load_model`).
    """
    return run_simulations(
        [cfg],
        data,
        on_round,
        model_outs=[model_out],
        mode=mode,
        devices=devices,
        backend_config=backend_config,
        verbose=verbose,
    )[0]


def run_simulations(
    cfgs: Sequence[FedConfig],
    data: Dataset | None = None,
    on_round: OnRound | None = None,
    *,
    model_outs: Sequence[str | Path | None] | None = None,
    mode: str = "lab",
    devices: ClientApp | None = None,
    backend_config: dict[str, Any] | None = None,
    verbose: bool = False,
) -> list[History]:
    """Several experiments, one after another, on one start of the Simulation Engine.

    They share ``max(cfg.num_devices)`` virtual SuperNodes; an experiment with
    ``num_devices=n`` uses those with partition ids ``0..n-1``. ``data`` defaults to
    :func:`fedlearn_lab.load_digits`. ``backend_config`` overrides Flower's Ray
    settings (e.g. ``{"init_args": {"_temp_dir": "/tmp/ray-x"}}``).

    ``mode="deployment"`` runs the deployment mode (:mod:`fedlearn_lab.flower.deploy`):
    the server holds only the shared dataset and the test set of ``data``, and each
    device only its partition. ``devices`` replaces fedlearn_lab's ClientApp by any
    that keeps the message contract (:mod:`fedlearn_lab.flower.contract`).
    """
    cfgs = list(cfgs)
    if not cfgs or not all(isinstance(c, FedConfig) for c in cfgs):
        raise TypeError(f"cfgs must be one or more FedConfig, got {cfgs!r}")
    outs = list(model_outs) if model_outs is not None else [None] * len(cfgs)
    if len(outs) != len(cfgs):
        raise ValueError(
            f"model_outs must hold one path or None per config, got {len(outs)}"
        )
    data = load_digits() if data is None else data
    check_mode(mode)
    setups = [make_setup(cfg, data) for cfg in cfgs]  # bad input fails before Ray
    if mode == "deployment":  # the server keeps only its shared dataset and test set
        setups = [server_setup(s.cfg, server_data_of(s)) for s in setups]
    from flwr.simulation import run_simulation as simulate  # imports Ray: when used

    num_nodes = max(c.num_devices for c in cfgs)
    histories: list[History] = []
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        nodes = find_devices(grid, num_nodes, timeout=600.0)
        for setup, out in zip(setups, outs, strict=True):
            history = serve(
                grid, setup, nodes, dataset=data.name, on_round=on_round, model_out=out
            )
            histories.append(history)

    with _flower_logs(verbose), _restored_env("PYTHONPATH"):
        simulate(
            server_app=app,
            client_app=devices if devices is not None else client_app(data),
            num_supernodes=num_nodes,
            backend_config=_backend_config(backend_config or {}),
        )
    return histories


def _backend_config(overrides: dict[str, Any]) -> dict[str, Any]:
    init_args = {
        "logging_level": "ERROR",
        "log_to_driver": False,
        "include_dashboard": False,
        **overrides.get("init_args", {}),
    }
    # One CPU per virtual device: Ray runs as many devices at once as there are cores.
    resources = {
        "num_cpus": 1,
        "num_gpus": 0.0,
        **overrides.get("client_resources", {}),
    }
    return {**overrides, "init_args": init_args, "client_resources": resources}


@contextlib.contextmanager
def _flower_logs(verbose: bool) -> Iterator[None]:
    logger = logging.getLogger("flwr")
    level = logger.level
    if not verbose:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _restored_env(name: str) -> Iterator[None]:
    # Flower's Ray backend appends sys.path to PYTHONPATH for its workers.
    before = os.environ.get(name)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before
