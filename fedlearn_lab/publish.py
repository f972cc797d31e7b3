"""Save and load a published global model: its state dict plus the config as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .config import FedConfig
from .models import make_model

_FORMAT = "fedlearn_lab.model/1"


def save_model(model: nn.Module, path: str | Path, cfg: FedConfig) -> Path:
    """Write ``path/model.pt`` (state dict) and ``path/config.json``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    meta = {
        "format": _FORMAT,
        "input_shape": list(model.input_shape),
        "num_classes": int(list(state.values())[-1].shape[0]),
        "config": cfg.to_dict(),
    }
    torch.save(state, path / "model.pt")
    (path / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    return path


def load_model(path: str | Path) -> tuple[nn.Module, FedConfig]:
    """Read what :func:`save_model` wrote; returns the model and its config."""
    path = Path(path)
    try:
        meta = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a saved fedlearn_lab model: {err}") from None
    if meta.get("format") != _FORMAT:
        raise ValueError(
            f"{path} holds format {meta.get('format')!r}, expected {_FORMAT!r}"
        )
    cfg = FedConfig.from_dict(meta["config"])
    model = make_model(
        cfg.model,
        tuple(meta["input_shape"]),
        meta["num_classes"],
        torch.Generator().manual_seed(0),
        hidden=cfg.hidden,
    )
    model.load_state_dict(torch.load(path / "model.pt", weights_only=True))
    return model, cfg
