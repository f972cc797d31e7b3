"""Save a federation between rounds and resume it, bit for bit.

A checkpoint is one zip file, written to a temporary file and then renamed over the
target, so a crash never leaves a half-written checkpoint behind:

- ``meta.json``: the format tag, the config, and the dataset's name and shapes;
- ``tensors.pt``: ``torch.save`` of plain containers (read back with
  ``weights_only=True``): the data themselves (they are small, and ``from_arrays``
  data could not be rebuilt from a name), the partitions, the server state and the
  history.

No generator state needs saving: every random draw of a round comes from a generator
derived from ``(seed, stream, round)`` (see :mod:`fedlearn_lab.seeding`), so the
config and the round number fix everything that follows. Zip keeps a CRC-32 of each
member and reading checks it, so a corrupted, truncated or foreign file raises
``ValueError`` naming the file and nothing is half-loaded.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from .aggregation import validate_update
from .config import FedConfig
from .data import Dataset
from .history import History, RoundRecord
from .state import ServerState, Setup, make_setup

FORMAT = "fedlearn_lab.checkpoint/1"
_DATA = ("x_train", "y_train", "x_test", "y_test")


def save_checkpoint(
    path: str | Path, setup: Setup, state: ServerState, history: History
) -> Path:
    """Write a run (config, data, partitions, server state, history) to ``path``."""
    path = Path(path)
    data = setup.data
    meta = {
        "format": FORMAT,
        "config": setup.cfg.to_dict(),
        "dataset": {
            "name": data.name,
            "num_classes": data.num_classes,
            "input_shape": list(data.input_shape),
        },
    }
    natural = data.natural_partition
    payload = {
        "data": {name: getattr(data, name) for name in _DATA},
        "natural_partition": None
        if natural is None
        else [torch.from_numpy(p) for p in natural],
        "device_indices": list(setup.device_indices),
        "shared_indices": setup.shared_indices,
        "state": {f.name: getattr(state, f.name) for f in dataclasses.fields(state)},
        "history": [dataclasses.asdict(r) for r in history],
    }
    tensors = io.BytesIO()
    torch.save(payload, tensors)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("meta.json", json.dumps(meta, indent=1))
        zf.writestr("tensors.pt", tensors.getvalue())
    _write_atomically(path, archive.getvalue())
    return path


def load_checkpoint(path: str | Path) -> tuple[Setup, ServerState, History]:
    """Read the run saved at ``path``, ready to run its next round."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with zipfile.ZipFile(path) as zf:
            meta = json.loads(zf.read("meta.json"))
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                found = meta.get("format") if isinstance(meta, dict) else None
                raise ValueError(f"format is {found!r}, expected {FORMAT!r}")
            payload = torch.load(io.BytesIO(zf.read("tensors.pt")), weights_only=True)
        return _rebuild(meta, payload)
    except Exception as err:  # whatever is wrong inside, the file is the problem
        raise ValueError(
            f"{path} is not a readable fedlearn_lab checkpoint "
            f"({type(err).__name__}: {err})"
        ) from err


def _rebuild(
    meta: dict[str, Any], payload: dict[str, Any]
) -> tuple[Setup, ServerState, History]:
    cfg = FedConfig.from_dict(meta["config"])
    described = meta["dataset"]
    natural = payload["natural_partition"]
    data = Dataset(
        **{name: payload["data"][name] for name in _DATA},
        num_classes=int(described["num_classes"]),
        name=str(described["name"]),
        input_shape=tuple(described["input_shape"]),
        natural_partition=None if natural is None else [p.numpy() for p in natural],
    )
    device_indices = list(payload["device_indices"])
    shared_indices = payload["shared_indices"]
    _check_indices(
        device_indices + [shared_indices], len(data.y_train), cfg.num_devices
    )
    setup = dataclasses.replace(
        make_setup(cfg, data),
        device_indices=device_indices,
        shared_indices=shared_indices,
    )
    state = ServerState(**payload["state"])
    reason = validate_update(state.weights, dict(setup.model.state_dict()))
    if reason is not None:
        raise ValueError(f"the saved global model does not fit the config ({reason})")
    history = History([RoundRecord(**r) for r in payload["history"]])
    if len(history) != state.round_idx:
        raise ValueError(f"{len(history)} records for {state.round_idx} rounds")
    return setup, state, history


def _check_indices(indices: list[Any], num_train: int, num_devices: int) -> None:
    if len(indices) != num_devices + 1:
        raise ValueError(
            f"{len(indices) - 1} device partitions for {num_devices} devices"
        )
    for idx in indices:
        if (
            not isinstance(idx, torch.Tensor)
            or idx.ndim != 1
            or idx.dtype != torch.int64
        ):
            raise ValueError("partitions must be 1-D int64 tensors")
        if len(idx) and (idx.min() < 0 or idx.max() >= num_train):
            raise ValueError(
                f"a partition indexes outside the {num_train} training samples"
            )


def _write_atomically(path: Path, content: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
