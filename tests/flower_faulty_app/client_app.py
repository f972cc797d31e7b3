"""fedlearn_lab's ClientApp with the faults a test asks for, to see a round go on.

A fault is ``KIND@ROUND``: in round ROUND the device raises (``raise``), or sends
NaN weights (``nan``), weights with a key missing (``keys``), a weight of the wrong
shape (``shape``) or dtype (``dtype``), or no ``num-examples`` (``metrics``). With
``flwr run`` a node's fault is its node config ``fault``; in a simulation,
:func:`with_faults` takes them by device id.
"""

from collections.abc import Callable

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedlearn_lab.flower import client_app


def with_faults(inner: ClientApp, fault_of: Callable[[Context], str]) -> ClientApp:
    """``inner``, with the fault ``fault_of(context)`` (``""``: none)."""
    app = ClientApp()

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        return inner(msg, context)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        kind, _, when = fault_of(context).partition("@")
        if not kind or int(msg.content["config"]["round-idx"]) != int(when):
            return inner(msg, context)
        if kind == "raise":
            raise RuntimeError(f"a fault asked for: {kind}@{when}")
        reply = inner(msg, context)
        weights = dict(reply.content["arrays"].to_torch_state_dict())
        metrics = dict(reply.content["metrics"])
        name = sorted(weights)[0]
        if kind == "nan":
            weights[name] = torch.full_like(weights[name], float("nan"))
        elif kind == "keys":
            del weights[name]
        elif kind == "shape":
            weights[name] = weights[name][:1]
        elif kind == "dtype":
            weights[name] = weights[name].double()
        elif kind == "metrics":
            del metrics["num-examples"]
        content = {"arrays": ArrayRecord(weights), "metrics": MetricRecord(metrics)}
        return Message(RecordDict(content), reply_to=msg)

    return app


def by_device(faults: dict[int, str]) -> Callable[[Context], str]:
    """Faults by device id (node config ``partition-id``), for a simulation."""
    return lambda context: faults.get(int(context.node_config["partition-id"]), "")


app = with_faults(
    client_app(), lambda context: str(context.node_config.get("fault", ""))
)
