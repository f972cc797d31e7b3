"""The Flower apps: a ClientApp whose devices run the core's device side of a round
(:func:`fedlearn_lab.rounds.train_device`), and a strategy whose server runs the
core's round plan and server side (:func:`fedlearn_lab.rounds.finish_round`).

See :mod:`fedlearn_lab.flower` for how a Flower run matches the in-process one.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

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
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from ..aggregation import validate_update
from ..config import FedConfig
from ..data import Dataset, load_dataset
from ..history import History, RoundRecord
from ..publish import save_model
from ..rounds import RoundPlan, finish_round, plan_round, train_device
from ..scaffold import corrections
from ..state import Setup, make_setup
from ..weights import stack

OnRound = Callable[[RoundRecord], None]
#: Run-config keys of the Flower app that are not ``FedConfig`` fields.
APP_KEYS = ("config-path", "dataset", "out-path", "model-path")


_SETUPS: dict[tuple[str, FedConfig], Setup] = {}


def _setup(cfg: FedConfig, key: str, data: Dataset | str) -> Setup:
    """``make_setup`` once per process and (data, config): Ray reuses its workers."""
    if (key, cfg) not in _SETUPS:
        if len(_SETUPS) >= 8:
            _SETUPS.clear()
        dataset = data if isinstance(data, Dataset) else load_dataset(data, cfg.seed)
        _SETUPS[key, cfg] = make_setup(cfg, dataset)
    return _SETUPS[key, cfg]


def _device_id(context: Context) -> int:
    if "partition-id" not in context.node_config:
        raise ValueError(
            "a SuperNode must be started with --node-config 'partition-id=K "
            "num-partitions=N': device K is the node with partition-id K"
        )
    return int(context.node_config["partition-id"])


def client_app(data: Dataset | None = None) -> ClientApp:
    """The devices' ClientApp: device ``partition-id`` trains on its own partition.

    ``data`` is the whole dataset (each device keeps its partition of it); ``None``
    loads the one the server names (``"digits"`` or ``"synthetic:ALPHA,BETA"``).
    """
    # Names the data in each worker's setup cache (the app reaches workers pickled).
    key = uuid.uuid4().hex if data is not None else ""
    app = ClientApp()

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        info = MetricRecord({"device-id": _device_id(context)})
        return Message(RecordDict({"device": info}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        config = msg.content["config"]
        cfg = FedConfig.from_dict(json.loads(str(config["fed-config"])))
        name = str(config["dataset"])
        setup = _setup(cfg, key or name, data if data is not None else name)
        device = _device_id(context)
        weights = dict(msg.content["arrays"].to_torch_state_dict())
        # The device derives the round's plan from the seed, as the server does:
        # whether it is malicious (then it attacks), and its minibatches.
        plan = plan_round(setup, int(config["round-idx"]))
        correction = None  # SCAFFOLD's c - c_i, sent to this device alone
        if "correction" in msg.content:
            correction = dict(msg.content["correction"].to_torch_state_dict())
        new, loss = train_device(setup, weights, plan, device, correction)
        metrics = {
            "num-examples": len(setup.device_indices[device]),
            "train-loss": loss,
        }
        content = RecordDict(
            {"arrays": ArrayRecord(new), "metrics": MetricRecord(metrics)}
        )
        return Message(content, reply_to=msg)

    return app


class ServerAdjustFedAvg(FedAvg):
    """Flower's FedAvg strategy whose rounds are the core's: the seeded round plan
    picks the devices (:func:`fedlearn_lab.rounds.plan_round`), only those that
    return are asked, and :func:`fedlearn_lab.rounds.finish_round` does the rest
    (screening, aggregation by ``cfg.aggregator``, the server adjustment, evaluation
    and the record), the same code as in-process.

    ``nodes`` maps device ids to Flower node ids. The rounds' records gather in
    ``history``; ``on_round(record)`` is called after each.
    """

    def __init__(
        self, setup: Setup, nodes: dict[int, int], on_round: OnRound | None = None
    ) -> None:
        super().__init__(fraction_evaluate=0.0, min_available_nodes=len(nodes))
        self.setup, self.nodes, self.on_round = setup, nodes, on_round
        self.devices = {node: k for k, node in nodes.items()}
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
        """Send the global weights to the devices of the round's plan that return
        (a lost device is never asked: its reply would be discarded); under SCAFFOLD
        each also gets its correction c - c_i."""
        if self.finished:
            return []
        plan = plan_round(self.setup, self.state.round_idx + 1)
        self._round = (plan, time.perf_counter())
        config["round-idx"] = plan.round_idx
        content = {self.arrayrecord_key: arrays, self.configrecord_key: config}
        nodes = [self.nodes[int(k)] for k in plan.returned]
        if not self.setup.cfg.scaffold:
            return self._construct_messages(
                RecordDict(content), nodes, MessageType.TRAIN
            )
        rows = corrections(*self.state.controls, plan.returned)
        return [
            message
            for row, node in enumerate(nodes)
            for message in self._construct_messages(
                RecordDict(
                    {
                        **content,
                        "correction": ArrayRecord({k: v[row] for k, v in rows.items()}),
                    }
                ),
                [node],
                MessageType.TRAIN,
            )
        ]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The core's server side over the replies in device order."""
        if self._round is None:
            return None, None
        (plan, started), self._round = self._round, None
        ordered = self._in_device_order(list(replies), plan)
        rows = [dict(m.content["arrays"].to_torch_state_dict()) for m in ordered]
        for device, row in zip(plan.returned, rows, strict=True):
            if (reason := validate_update(row, self.state.weights)) not in (
                None,
                "non-finite",
            ):
                raise RuntimeError(
                    f"device {device} sent malformed weights in round "
                    f"{plan.round_idx} ({reason})"
                )
        updates = (
            stack(rows)
            if rows
            else {k: v.new_empty(0, *v.shape) for k, v in self.state.weights.items()}
        )
        losses = torch.tensor(
            [float(m.content["metrics"]["train-loss"]) for m in ordered]
        )
        self.state, record = finish_round(self.state, self.setup, plan, updates, losses)
        record = dataclasses.replace(record, seconds=time.perf_counter() - started)
        self.history.append(record)
        if self.on_round is not None:
            self.on_round(record)
        metrics = {
            "accuracy": record.accuracy,
            "aggregate-accuracy": record.aggregate_accuracy,
            "train-loss": record.train_loss,
        }
        return ArrayRecord(self.state.weights), MetricRecord(metrics)

    def _in_device_order(
        self, replies: list[Message], plan: RoundPlan
    ) -> list[Message]:
        for reply in replies:
            if reply.has_error():
                device = self.devices.get(reply.metadata.src_node_id)
                raise RuntimeError(
                    f"device {device} failed in round {plan.round_idx}: "
                    f"{reply.error.reason}"
                )
        by_device = {self.devices[m.metadata.src_node_id]: m for m in replies}
        if sorted(by_device) != [int(k) for k in plan.returned]:
            raise RuntimeError(
                f"round {plan.round_idx}: devices {list(plan.returned)} were asked "
                f"but {sorted(by_device)} replied"
            )
        return [by_device[int(k)] for k in plan.returned]


def find_devices(grid: Grid, num_devices: int, timeout: float) -> dict[int, int]:
    """Device id -> Flower node id, asking each connected node for its ``partition-id``.

    Waits up to ``timeout`` seconds for ``num_devices`` nodes to connect.
    """
    deadline = time.monotonic() + timeout
    while len(node_ids := sorted(grid.get_node_ids())) < num_devices:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"only {len(node_ids)} of {num_devices} devices connected "
                f"within {timeout:g} s"
            )
        time.sleep(0.1)
    queries = [
        Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY)
        for node in node_ids
    ]
    nodes = {}
    for reply in grid.send_and_receive(queries, timeout=timeout):
        if reply.has_error():
            raise RuntimeError(
                f"node {reply.metadata.src_node_id}: {reply.error.reason}"
            )
        nodes[int(reply.content["device"]["device-id"])] = reply.metadata.src_node_id
    missing = sorted(set(range(num_devices)) - set(nodes))
    if missing or len(nodes) != len(node_ids):
        raise RuntimeError(
            f"nodes must hold distinct partition ids covering 0..{num_devices - 1}; "
            f"missing {missing}, found {sorted(nodes)}"
        )
    return nodes


def serve(
    grid: Grid,
    setup: Setup,
    nodes: dict[int, int],
    *,
    dataset: str,
    on_round: OnRound | None = None,
    model_out: str | Path | None = None,
    timeout: float = 600.0,
) -> History:
    """Run one experiment on ``grid``, device ``k`` being node ``nodes[k]``; returns its
    history and, if ``model_out`` is set, saves the published model there
    (:func:`fedlearn_lab.save_model`). ``dataset`` names the data for devices that
    load it themselves (``"digits"``, ``"synthetic:ALPHA,BETA"``)."""
    cfg = setup.cfg
    strategy = ServerAdjustFedAvg(
        setup, {k: nodes[k] for k in range(cfg.num_devices)}, on_round
    )
    train_config = ConfigRecord(
        {"fed-config": json.dumps(cfg.to_dict()), "dataset": dataset}
    )
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(strategy.state.weights),
        num_rounds=cfg.rounds,
        timeout=timeout,
        train_config=train_config,
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
    """The ServerApp of ``flwr run``, set by its run config (see the example app):
    ``config-path`` or field keys, ``dataset``, and where to write the history as JSON
    (``out-path``) and the published model (``model-path``)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run = dict(context.run_config)
        cfg = config_from_run_config(run)
        dataset = str(run.get("dataset", "digits"))
        setup = make_setup(cfg, load_dataset(dataset, cfg.seed))
        nodes = find_devices(grid, cfg.num_devices, timeout=600.0)
        model_out = str(run.get("model-path", "")) or None
        history = serve(grid, setup, nodes, dataset=dataset, model_out=model_out)
        if run.get("out-path"):
            save_history(history, Path(str(run["out-path"])))

    return app


def save_history(history: History, path: Path) -> Path:
    """Write the records as JSON (``seconds`` included)."""
    path.write_text(json.dumps([dataclasses.asdict(r) for r in history], indent=1))
    return path


def load_history(path: Path) -> History:
    """Read what :func:`save_history` wrote."""
    rows = json.loads(Path(path).read_text())
    return History([RoundRecord.from_dict(row) for row in rows])
