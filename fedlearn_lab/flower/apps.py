"""The Flower apps: a ClientApp whose devices run the core's device side of a round
(:func:`fedlearn_lab.rounds.train_device`), and a strategy whose server runs the
core's round plan and server side (:func:`fedlearn_lab.rounds.finish_round`).

See :mod:`fedlearn_lab.flower` for how a Flower run matches the in-process one.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
import uuid
from collections.abc import Callable, Iterable
from logging import WARNING
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from ..config import FedConfig
from ..data import Dataset, load_dataset
from ..history import History, RoundRecord
from ..publish import save_model
from ..rounds import RoundPlan, finish_round, plan_round, train_device
from ..scaffold import corrections
from ..state import Setup, make_setup
from ..weights import Weights, stack
from .contract import (
    ARRAYS,
    CONFIG,
    CORRECTION,
    ERROR,
    METRICS,
    TIMEOUT,
    Refused,
    label_counts_of,
    read_reply,
    train_config,
    wants_label_counts,
)
from .deploy import (
    ServerSetup,
    check_mode,
    device_data,
    load_server_data,
    server_data_of,
    server_setup,
    train_own,
)

OnRound = Callable[[RoundRecord], None]
#: Run-config keys of the Flower app that are not ``FedConfig`` fields.
APP_KEYS = (
    "config-path",
    "dataset",
    "out-path",
    "model-path",
    "mode",
    "server-data",
    "round-timeout",
)


_SETUPS: dict[tuple[str, FedConfig], Setup] = {}


def _setup(cfg: FedConfig, key: str, data: Dataset | str) -> Setup:
    """``make_setup`` once per process and (data, config): Ray reuses its workers."""
    if (key, cfg) not in _SETUPS:
        if len(_SETUPS) >= 8:
            _SETUPS.clear()
        dataset = data if isinstance(data, Dataset) else load_dataset(data, cfg.seed)
        _SETUPS[key, cfg] = make_setup(cfg, dataset)
    return _SETUPS[key, cfg]


def _device_id(context: Context) -> int | None:
    """The device id a node is started with (node config ``partition-id``, or
    ``device-id``), or None."""
    for key in ("device-id", "partition-id"):
        if key in context.node_config:
            return int(context.node_config[key])
    return None


def client_app(data: Dataset | None = None) -> ClientApp:
    """fedlearn_lab's ClientApp, for both modes (the message's ``mode`` says which).

    Lab mode: device ``partition-id`` derives the round from the seed and trains
    on its partition of ``data`` (the whole dataset; ``None`` loads the one the
    server names, ``"digits"`` or ``"synthetic:ALPHA,BETA"``), as in-process.
    Deployment mode: the device loads only its own data, the file its node config
    names (``data-path``) or else its partition, and trains with its own stream.
    """
    # Names the data in each worker's setup cache (the app reaches workers pickled).
    key = uuid.uuid4().hex if data is not None else ""
    app = ClientApp()

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        device = _device_id(context)
        info = MetricRecord({} if device is None else {"device-id": device})
        return Message(RecordDict({"device": info}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        config = msg.content[CONFIG]
        cfg = FedConfig.from_dict(json.loads(str(config["fed-config"])))
        name, device = str(config["dataset"]), int(config["device-id"])
        weights = dict(msg.content[ARRAYS].to_torch_state_dict())
        correction = None  # SCAFFOLD's c - c_i, sent to this device alone
        if CORRECTION in msg.content:
            correction = dict(msg.content[CORRECTION].to_torch_state_dict())
        metrics = {}
        source = data if data is not None else name
        if str(config["mode"]) == "deployment":
            own = _own_data(context, cfg, key or name, source, device)
            new, loss = train_own(
                cfg,
                weights,
                own,
                round_idx=int(config["round-idx"]),
                device_id=device,
                input_shape=tuple(config["input-shape"]),
                num_classes=int(config["num-classes"]),
                correction=correction,
            )
            if config["label-counts"]:
                counts = label_counts_of(own[1].numpy(), int(config["num-classes"]))
                metrics["label-counts"] = counts
            num_examples = len(own[1])
        else:
            setup = _setup(cfg, key or name, source)
            # The device derives the round's plan from the seed, as the server
            # does: whether it is malicious (then it attacks), and its minibatches.
            plan = plan_round(setup, int(config["round-idx"]))
            new, loss = train_device(setup, weights, plan, device, correction)
            num_examples = setup.train_sizes[device]
        metrics |= {"num-examples": num_examples, "train-loss": loss}
        content = RecordDict({ARRAYS: ArrayRecord(new), METRICS: MetricRecord(metrics)})
        return Message(content, reply_to=msg)

    return app


def _own_data(
    context: Context, cfg: FedConfig, key: str, data: Dataset | str, device: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A deployed device's data: the file its node config names (``data-path``),
    or else its partition of ``data`` (a dataset or its name)."""
    if path := str(context.node_config.get("data-path", "")):
        return device_data(path)
    setup = _setup(cfg, key, data)
    idx = setup.device_indices[device]
    return setup.data.x_train[idx], setup.data.y_train[idx]


class ServerAdjustFedAvg(FedAvg):
    """Flower's FedAvg strategy whose rounds are the core's: the seeded round plan
    picks the devices (:func:`fedlearn_lab.rounds.plan_round`), only those that
    return are asked, and :func:`fedlearn_lab.rounds.finish_round` does the rest
    (screening, aggregation by ``cfg.aggregator``, the server adjustment, evaluation
    and the record), the same code as in-process.

    A device that fails is part of the round, as in-process: an error reply or no
    reply within the round's timeout makes it lost (``"error"``, ``"timeout"``); a
    reply that breaks the message contract is rejected with the reason
    (:func:`fedlearn_lab.flower.contract.read_reply`). The round goes on with the
    rest. In deployment mode (``setup`` a
    :class:`~fedlearn_lab.flower.deploy.ServerSetup`) the replies' reports are all
    the server knows of the devices' data.

    ``nodes`` maps device ids to Flower node ids. The rounds' records gather in
    ``history``; ``on_round(record)`` is called after each.
    """

    def __init__(
        self,
        setup: Setup,
        nodes: dict[int, int],
        on_round: OnRound | None = None,
        *,
        dataset: str = "digits",
    ) -> None:
        super().__init__(fraction_evaluate=0.0, min_available_nodes=len(nodes))
        self.setup, self.nodes, self.on_round = setup, nodes, on_round
        self.devices = {node: k for k, node in nodes.items()}
        self.mode = "deployment" if isinstance(setup, ServerSetup) else "lab"
        self.dataset = dataset
        self.state = setup.initial_state()
        self.history = History()
        self._round: tuple[RoundPlan, float] | None = None  # the plan, start time

    @property
    def finished(self) -> bool:
        """True once the target accuracy is reached (Flower then runs empty rounds)."""
        target = self.setup.cfg.target_accuracy
        return (
            target is not None
            and bool(self.history)
            and self.history[-1].accuracy >= target
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the global weights and the contract's config to each device of the
        round's plan that returns (a lost device is never asked: its reply would be
        discarded); under SCAFFOLD each also gets its correction c - c_i."""
        if self.finished:
            return []
        plan = plan_round(self.setup, self.state.round_idx + 1)
        self._round = (plan, time.perf_counter())
        data = self.setup.data
        rows = None
        if self.setup.cfg.scaffold:
            rows = corrections(*self.state.controls, plan.returned)
        messages = []
        for row, k in enumerate(int(k) for k in plan.returned):
            config = train_config(
                self.setup.cfg,
                round_idx=plan.round_idx,
                device_id=k,
                mode=self.mode,
                dataset=self.dataset,
                num_classes=data.num_classes,
                input_shape=data.input_shape,
            )
            content = {self.arrayrecord_key: arrays, CONFIG: config}
            if rows is not None:
                content[CORRECTION] = ArrayRecord({n: v[row] for n, v in rows.items()})
            messages += self._construct_messages(
                RecordDict(content), [self.nodes[k]], MessageType.TRAIN
            )
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The core's server side over the replies that arrived, in device order."""
        if self._round is None:
            return None, None
        (plan, started), self._round = self._round, None
        plan, updates, losses, refused = self._read(list(replies), plan)
        self.state, record = finish_round(self.state, self.setup, plan, updates, losses)
        failures = {**dict(record.failures), **refused}  # the true reasons
        record = dataclasses.replace(
            record,
            seconds=time.perf_counter() - started,
            failures=tuple(sorted(failures.items())),
        )
        self.history.append(record)
        if self.on_round is not None:
            self.on_round(record)
        metrics = {
            "accuracy": record.accuracy,
            "aggregate-accuracy": record.aggregate_accuracy,
            "train-loss": record.train_loss,
        }
        return ArrayRecord(self.state.weights), MetricRecord(metrics)

    def _read(
        self, replies: list[Message], plan: RoundPlan
    ) -> tuple[RoundPlan, Weights, torch.Tensor, dict[int, str]]:
        """The round's plan as it turned out (devices that failed are lost), the
        returned updates stacked in device order with their losses, and the
        devices whose reply was refused, with the reason. A refused reply's row is
        NaN, so the round's screening leaves it out."""
        asked = [int(k) for k in plan.returned]
        by_device = {}
        for reply in replies:
            k = self.devices.get(reply.metadata.src_node_id)
            if k in asked and k not in by_device:
                by_device[k] = reply
        lost, refused = dict(plan.lost), {}
        returned, rows, losses = [], [], []
        wants = wants_label_counts(self.setup.cfg)
        for k in asked:
            reply = by_device.get(k)
            if reply is None or reply.has_error():
                lost[k] = TIMEOUT if reply is None else ERROR
                why = "no reply in time" if reply is None else reply.error.reason
                log(WARNING, "round %s: device %s lost: %s", plan.round_idx, k, why)
                continue
            try:
                row, loss, report = read_reply(
                    reply,
                    self.state.weights,
                    num_classes=self.setup.data.num_classes,
                    label_counts=wants and self.mode == "deployment",
                )
            except Refused as err:
                refused[k] = err.reason
                log(WARNING, "round %s: device %s refused: %s", plan.round_idx, k, err)
                row = {
                    n: torch.full_like(v, math.nan)
                    for n, v in self.state.weights.items()
                }
                loss, report = math.nan, None
            if self.mode == "deployment" and report is not None:
                self.setup.reports[k] = report
            returned.append(k)
            rows.append(row)
            losses.append(loss)
        ids = np.array(returned, dtype=plan.returned.dtype)
        plan = dataclasses.replace(
            plan,
            returned=ids,
            lost=lost,
            malicious=plan.malicious[np.isin(plan.malicious, ids)],
        )
        updates = (
            stack(rows)
            if rows
            else {k: v.new_empty(0, *v.shape) for k, v in self.state.weights.items()}
        )
        return plan, updates, torch.tensor(losses), refused


def find_devices(grid: Grid, num_devices: int, timeout: float) -> dict[int, int]:
    """Device id -> Flower node id, once ``num_devices`` nodes have connected (waits
    up to ``timeout`` seconds).

    Each node is asked (a QUERY message) for the id it was started with (node config
    ``partition-id`` or ``device-id``). The query is optional: nodes that do not
    answer it, or answer without an id, take the ids left, in node id order.
    """
    deadline = time.monotonic() + timeout
    while len(node_ids := sorted(grid.get_node_ids())) < num_devices:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"only {len(node_ids)} of {num_devices} devices connected "
                f"within {timeout:g} s"
            )
        time.sleep(0.1)
    if len(node_ids) > num_devices:
        raise RuntimeError(
            f"{len(node_ids)} nodes connected for a run of {num_devices} devices"
        )
    queries = [
        Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY)
        for node in node_ids
    ]
    nodes = {}
    for reply in grid.send_and_receive(queries, timeout=timeout):
        info = None if reply.has_error() else reply.content.get("device")
        if info is not None and "device-id" in info:
            k = int(info["device-id"])
            if not 0 <= k < num_devices or k in nodes:
                raise RuntimeError(
                    f"nodes must hold distinct device ids in 0..{num_devices - 1}; "
                    f"node {reply.metadata.src_node_id} says {k}"
                )
            nodes[k] = reply.metadata.src_node_id
    free = iter(sorted(set(range(num_devices)) - set(nodes)))
    for node in node_ids:
        if node not in nodes.values():
            nodes[next(free)] = node
    return nodes


def serve(
    grid: Grid,
    setup: Setup,
    nodes: dict[int, int],
    *,
    dataset: str,
    on_round: OnRound | None = None,
    model_out: str | Path | None = None,
    round_timeout: float = 600.0,
) -> History:
    """Run one experiment on ``grid``, device ``k`` being node ``nodes[k]``; returns its
    history and, if ``model_out`` is set, saves the published model there
    (:func:`fedlearn_lab.save_model`). ``dataset`` names the data for devices that
    load it themselves (``"digits"``, ``"synthetic:ALPHA,BETA"``); a device whose
    reply has not come ``round_timeout`` seconds after the round's messages went
    out is lost."""
    cfg = setup.cfg
    strategy = ServerAdjustFedAvg(
        setup, {k: nodes[k] for k in range(cfg.num_devices)}, on_round, dataset=dataset
    )
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(strategy.state.weights),
        num_rounds=cfg.rounds,
        timeout=round_timeout,
    )
    if model_out is not None:
        model = copy.deepcopy(setup.model)
        model.load_state_dict(strategy.state.weights)
        save_model(model, model_out, cfg)
    return strategy.history


def config_from_run_config(run_config: dict[str, Any]) -> FedConfig:
    """The ``FedConfig`` of a Flower run config: the JSON file at ``config-path`` if
    set, else the keys that name fields (``num-devices`` for ``num_devices``)."""
    path = str(run_config.get("config-path", ""))
    if path:
        return FedConfig.from_dict(json.loads(Path(path).read_text()))
    fields = {
        k.replace("-", "_"): v for k, v in run_config.items() if k not in APP_KEYS
    }
    return FedConfig.from_dict(fields)


def server_app() -> ServerApp:
    """The ServerApp of ``flwr run``, set by its run config (see the example apps):
    ``config-path`` or field keys; ``mode``, ``"lab"`` or ``"deployment"``; the
    data: ``dataset`` (a name), and in deployment mode ``server-data`` (a
    ``server.npz`` of :func:`~fedlearn_lab.flower.deploy.write_data_files`; if empty,
    the shared dataset and test set of ``dataset``); ``round-timeout`` (seconds);
    where to write the history as JSON (``out-path``, rewritten after each round) and
    the published model (``model-path``)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run = dict(context.run_config)
        cfg = config_from_run_config(run)
        setup, dataset = run_setup(cfg, run)
        nodes = find_devices(grid, cfg.num_devices, timeout=600.0)
        out = Path(str(run["out-path"])) if run.get("out-path") else None
        history = serve(
            grid,
            setup,
            nodes,
            dataset=dataset,
            on_round=None if out is None else _saving(out),
            model_out=str(run.get("model-path", "")) or None,
            round_timeout=float(run.get("round-timeout", 600.0)),
        )
        if out is not None:
            save_history(history, out)

    return app


def run_setup(cfg: FedConfig, run: dict[str, Any]) -> tuple[Setup, str]:
    """The server's setup for a run config, and the name of its dataset."""
    mode, dataset = str(run.get("mode", "lab")), str(run.get("dataset", "digits"))
    check_mode(mode)
    if mode == "lab":
        return make_setup(cfg, load_dataset(dataset, cfg.seed)), dataset
    if run.get("server-data"):
        data = load_server_data(str(run["server-data"]))
    else:  # the named dataset's shared part and test set; the rest is dropped
        data = server_data_of(make_setup(cfg, load_dataset(dataset, cfg.seed)))
    return server_setup(cfg, data), dataset


def _saving(path: Path) -> OnRound:
    """Rewrite the history at ``path`` after each round (a crash keeps the rounds)."""
    history = History()

    def on_round(record: RoundRecord) -> None:
        history.append(record)
        partial = path.with_name(path.name + ".partial")
        save_history(history, partial).replace(path)

    return on_round


def save_history(history: History, path: Path) -> Path:
    """Write the records as JSON (``seconds`` included)."""
    path.write_text(json.dumps([dataclasses.asdict(r) for r in history], indent=1))
    return path


def load_history(path: Path) -> History:
    """Read what :func:`save_history` wrote."""
    rows = json.loads(Path(path).read_text())
    return History([RoundRecord.from_dict(row) for row in rows])
