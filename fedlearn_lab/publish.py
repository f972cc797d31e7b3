"""Save and load a published global model: its state dict plus the config as JSON.

:func:`load_model` trusts nothing it reads: every problem with the folder (a missing
or oversized file, bad JSON, a config that does not validate, weights with the wrong
names, shapes or dtypes, or NaN/Inf) is a ``ValueError`` naming the file and what is
wrong. ``model.pt`` is read with ``torch.load(weights_only=True)``, so no pickled code
runs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import FedConfig
from .models import make_model
from .weights import Weights, weights_bytes

_FORMAT = "fedlearn_lab.model/1"
#: config.json holds a config and two shapes: a few kB. Larger files are not read.
MAX_CONFIG_BYTES = 1 << 20
#: model.pt may hold the weights' bytes twice over plus this much of torch.save's
#: own structure (names, pickle, zip headers); anything larger is not read.
_MODEL_SLACK_BYTES = 1 << 20
#: At most this many input features (a 512x512 image): with ``hidden`` at its limit
#: the MLP's first layer is then 4 GiB, the most a loaded model may allocate.
MAX_FEATURES = 1 << 18


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
    """Read what :func:`save_model` wrote; returns the model and its config.

    Anything malformed is a ``ValueError`` naming the file and what is wrong.
    """
    path = Path(path)
    meta_path, weights_path = path / "config.json", path / "model.pt"
    if not path.is_dir():
        raise ValueError(f"{path} is not a saved fedlearn_lab model: no such folder")
    meta = _read_json(meta_path)
    try:
        cfg = FedConfig.from_dict(meta["config"])
        model = make_model(
            cfg.model,
            _shape(meta["input_shape"]),
            _count(meta["num_classes"]),
            torch.Generator().manual_seed(0),
            hidden=cfg.hidden,
        )
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        what = f"no {err}" if isinstance(err, KeyError) else str(err)
        raise ValueError(f"{meta_path} does not describe a model: {what}") from None
    reference = dict(model.state_dict())
    state = _read_weights(
        weights_path, 2 * weights_bytes(reference) + _MODEL_SLACK_BYTES
    )
    problem = weights_problem(state, reference)
    if problem is not None:
        raise ValueError(
            f"{weights_path} does not hold the model that {meta_path.name} describes: "
            f"{problem}"
        )
    model.load_state_dict(state)
    return model, cfg


def weights_problem(weights: object, reference: Weights) -> str | None:
    """What keeps ``weights`` from standing in for ``reference`` (names, shapes,
    dtypes, NaN/Inf), in words; None if nothing does."""
    if not isinstance(weights, dict):
        return f"a {type(weights).__name__}, not a dict of tensors"
    missing, extra = (
        reference.keys() - weights.keys(),
        weights.keys() - reference.keys(),
    )
    if missing or extra:
        return f"missing {sorted(missing)}, unexpected {sorted(map(str, extra))}"
    for name, ref in reference.items():
        value = weights[name]
        if not isinstance(value, torch.Tensor):
            return f"{name} is a {type(value).__name__}, not a tensor"
        if value.shape != ref.shape or value.dtype != ref.dtype:
            return (
                f"{name} is {value.dtype} {tuple(value.shape)}, expected "
                f"{ref.dtype} {tuple(ref.shape)}"
            )
        if not bool(value.isfinite().all()):
            return f"{name} holds NaN or Inf"
    return None


def _read_json(path: Path) -> dict[str, Any]:
    _size(path, MAX_CONFIG_BYTES)
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a saved fedlearn_lab model: {err}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} holds a JSON {type(meta).__name__}, not an object")
    if meta.get("format") != _FORMAT:
        raise ValueError(
            f"{path} holds format {meta.get('format')!r}, expected {_FORMAT!r}"
        )
    return meta


def _read_weights(path: Path, limit: int) -> object:
    _size(path, limit)
    try:
        return torch.load(path, weights_only=True)
    except Exception as err:  # torch raises many kinds; the file is the problem
        raise ValueError(
            f"{path} is not a state dict written by save_model ({type(err).__name__})"
        ) from None


def _size(path: Path, limit: int) -> int:
    """The size of file ``path``, checked before it is read."""
    if not path.is_file():
        raise ValueError(f"{path} is missing: not a saved fedlearn_lab model")
    size = path.stat().st_size
    if size > limit:
        raise ValueError(
            f"{path} is {size} bytes, more than the {limit} a saved model of this "
            f"config can be: not read"
        )
    return size


def _shape(value: Any) -> tuple[int, ...]:
    if (
        not isinstance(value, list)
        or not value
        or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in value)
        or math.prod(value) > MAX_FEATURES
    ):
        raise ValueError(
            f"input_shape must be a list of sizes >= 1 with at most {MAX_FEATURES} "
            f"features in all, got {value!r}"
        )
    return tuple(value)


def _count(value: Any) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not 2 <= value <= 1 << 16
    ):
        raise ValueError(f"num_classes must be an integer in [2, 65536], got {value!r}")
    return value
