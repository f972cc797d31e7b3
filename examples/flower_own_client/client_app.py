"""A device's ClientApp written only against Flower's API and torch: no fedlearn_lab.

It keeps fedlearn_lab's message contract (the table in the README, "Flower"), so it
joins a run whose server is fedlearn_lab's ServerApp (server adjustment, FedDU):

- it reads the global weights (``arrays``) and ``local-epochs``, ``local-lr``,
  ``batch-size``, ``proximal-mu`` and ``label-counts`` from ``config``;
- it trains its own small torch model on its own data, a ``.npz`` with ``x`` and
  ``y`` named by its node config ``data-path``;
- it replies with its new weights and ``num-examples``, ``train-loss`` and, when the
  server asks (FedDU), ``label-counts``.

Run it with real processes as in the README (``flwr run examples/flower_own_client``
with SuperNodes started with ``--node-config 'data-path="device-0.npz"'``).
"""

from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn


class Net(nn.Module):
    """features -> hidden -> classes, with ReLU: the layers the server's MLP has."""

    def __init__(self, num_features: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(num_features, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def load_data(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """This device's own samples."""
    with np.load(path) as data:
        return torch.tensor(data["x"], dtype=torch.float32), torch.tensor(data["y"])


def train(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: dict, seed: int
) -> float:
    """Local SGD (with FedProx's proximal term if mu > 0); returns the mean loss."""
    start = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=float(config["local-lr"]))
    mu, batch = float(config["proximal-mu"]), int(config["batch-size"])
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(int(config["local-epochs"])):
        for idx in torch.randperm(len(y), generator=generator).split(batch):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            losses.append(loss.item())
            if mu > 0:
                gaps = (p - p0 for p, p0 in zip(model.parameters(), start, strict=True))
                loss = loss + mu / 2 * sum(g.square().sum() for g in gaps)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return float(np.mean(losses))


def make_app(data_dir: str | Path | None = None) -> ClientApp:
    """The ClientApp; ``data_dir`` (a simulation's) holds ``device-K.npz`` for the
    node with ``partition-id`` K, when its node config names no ``data-path``."""
    app = ClientApp()

    @app.train()
    def on_train(msg: Message, context: Context) -> Message:
        if "correction" in msg.content:
            raise ValueError("this ClientApp does not implement SCAFFOLD")
        config = msg.content["config"]
        path = context.node_config.get("data-path")
        if not path:
            path = Path(data_dir) / f"device-{context.node_config['partition-id']}.npz"
        x, y = load_data(str(path))
        state = msg.content["arrays"].to_torch_state_dict()
        hidden, num_features = state["fc1.weight"].shape
        model = Net(num_features, hidden, state["fc2.weight"].shape[0])
        model.load_state_dict(state)
        seed = hash((int(config["round-idx"]), context.node_id)) % 2**32
        loss = train(model, x, y, config, seed)
        metrics = {"num-examples": len(y), "train-loss": loss}
        if config["label-counts"]:
            counts = np.bincount(y.numpy(), minlength=int(config["num-classes"]))
            metrics["label-counts"] = counts.tolist()
        reply = {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord(metrics),
        }
        return Message(RecordDict(reply), reply_to=msg)

    return app


app = make_app()
