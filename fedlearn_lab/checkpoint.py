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
``ValueError`` naming the file and nothing is half-loaded. A file that reads but was
edited is refused too (:func:`_problem`): malformed data, partitions that overlap
or miss samples, a config that does not give the saved split, or a global model that
does not fit it. Members are stored, not compressed, so none can be larger than the
file; their declared sizes are checked before anything is read (no zip bombs). Each
save first removes the temporary files that interrupted saves of the same target
left behind (``.NAME.XXXXXXXX.tmp``), unless a live save holds them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from .config import FedConfig
from .data import Dataset, check_dataset
from .history import History, RoundRecord
from .publish import weights_problem
from .state import ServerState, Setup, make_setup

try:  # a live save locks its temporary file, so another save never removes it
    import fcntl
except ImportError:  # not on Windows: there every matching temporary is removed
    fcntl = None


FORMAT = "fedlearn_lab.checkpoint/1"
_DATA = ("x_train", "y_train", "x_test", "y_test")
#: The most a member may declare before it is read: meta.json is a config and a few
#: shapes; tensors.pt holds the data (an MNIST-sized run is about 230 MB).
MAX_META_BYTES = 1 << 20
MAX_TENSORS_BYTES = 2 << 30


class CheckpointError(ValueError):
    """A checkpoint file that reads but does not hold a valid run (names the file)."""


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
            meta = json.loads(_member(zf, "meta.json", MAX_META_BYTES, path))
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                found = meta.get("format") if isinstance(meta, dict) else None
                raise ValueError(f"format is {found!r}, expected {FORMAT!r}")
            tensors = _member(zf, "tensors.pt", MAX_TENSORS_BYTES, path)
            payload = torch.load(io.BytesIO(tensors), weights_only=True)
        return _rebuild(meta, payload, path)
    except CheckpointError:
        raise
    except Exception as err:  # whatever is wrong inside, the file is the problem
        raise ValueError(
            f"{path} is not a readable fedlearn_lab checkpoint "
            f"({type(err).__name__}: {err})"
        ) from err


def _member(zf: zipfile.ZipFile, name: str, limit: int, path: Path) -> bytes:
    """Member ``name``, read only if the size it declares is plausible."""
    size = zf.getinfo(name).file_size
    limit = min(limit, path.stat().st_size)  # stored members: never above the file
    if size > limit:
        raise CheckpointError(
            f"{path} is not a valid fedlearn_lab checkpoint: its {name} declares "
            f"{size} bytes, more than the {limit} it can hold (the file's size, at "
            f"most {MAX_META_BYTES if name == 'meta.json' else MAX_TENSORS_BYTES}); "
            "not read"
        )
    return zf.read(name)


def _rebuild(
    meta: dict[str, Any], payload: dict[str, Any], path: Path
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
    check_dataset(data, name="the saved data")
    derived = make_setup(cfg, data)
    device_indices = list(payload["device_indices"])
    shared_indices = payload["shared_indices"]
    state = ServerState(**payload["state"])
    history = History([RoundRecord(**r) for r in payload["history"]])
    # derived: what the config makes of the data, to compare the saved split with.
    problem = _problem(
        cfg, data, device_indices, shared_indices, state, history, derived
    )
    if problem is not None:
        raise CheckpointError(
            f"{path} is not a valid fedlearn_lab checkpoint: {problem}"
        )
    setup = dataclasses.replace(
        derived, device_indices=device_indices, shared_indices=shared_indices
    )
    return setup, state, history


def _problem(
    cfg: FedConfig,
    data: Dataset,
    device_indices: list[Any],
    shared_indices: Any,
    state: Any,
    history: History,
    derived: Any,
) -> str | None:
    """What makes the checkpoint's parts not one valid run, or None."""
    try:
        check_dataset(data, name="the saved data")
    except (TypeError, ValueError) as err:
        return str(err)
    problem = _split_problem(device_indices, shared_indices, len(data.y_train), cfg)
    if problem is not None:
        return problem
    saved = [*device_indices, shared_indices]
    if not all(
        torch.equal(a, b)
        for a, b in zip(
            saved, [*derived.device_indices, derived.shared_indices], strict=True
        )
    ):
        return (
            "its config does not give its partitions (an edited seed, partition or "
            "shared_fraction, or a checkpoint of another version of fedlearn_lab)"
        )
    reference = dict(derived.model.state_dict())
    if not isinstance(state.round_idx, int) or not 0 <= state.round_idx <= cfg.rounds:
        return f"round {state.round_idx!r} is not in [0, rounds={cfg.rounds}]"
    moments = state.moments or (None, None)
    c, c_all = state.controls or (None, None)
    if (c is None) == cfg.scaffold or (state.moments is None) != (
        cfg.server_opt == "none" or state.round_idx == 0
    ):
        return "its server state does not match its config's method"
    if c_all is not None and any(
        v.shape[:1] != (cfg.num_devices,) for v in c_all.values()
    ):
        return f"its SCAFFOLD controls are not stacked for {cfg.num_devices} devices"
    for name, weights in (
        ("global model", state.weights),
        ("momentum", state.momentum),
        ("server optimiser's first moment", moments[0]),
        ("server optimiser's second moment", moments[1]),
        ("SCAFFOLD control c", c),
        ("SCAFFOLD control c_i", None if c_all is None else _row(c_all)),
    ):
        problem = None if weights is None else weights_problem(weights, reference)
        if problem is not None:
            return f"the saved {name} does not fit the config: {problem}"
    if [r.round for r in history] != list(range(1, state.round_idx + 1)):
        return f"{len(history)} history records for {state.round_idx} rounds"
    return None


def _row(stacked: dict[str, Any]) -> dict[str, Any]:
    """The first row of stacked weights (all rows share its form)."""
    return {k: v[0] for k, v in stacked.items()}


def _split_problem(
    device_indices: list[Any], shared_indices: Any, num_train: int, cfg: FedConfig
) -> str | None:
    """What is wrong with the saved partitions on their own, or None."""
    if len(device_indices) != cfg.num_devices:
        return f"{len(device_indices)} device partitions for {cfg.num_devices} devices"
    parts = [*device_indices, shared_indices]
    if not all(
        isinstance(p, torch.Tensor) and p.ndim == 1 and p.dtype == torch.int64
        for p in parts
    ):
        return "partitions must be 1-D int64 tensors"
    sizes = [len(p) for p in device_indices]
    if min(sizes) < cfg.min_device_size:
        return f"a device partition holds {min(sizes)} samples, fewer than " + (
            f"min_device_size={cfg.min_device_size}"
        )
    joined = torch.cat(parts)
    if len(joined) and (joined.min() < 0 or joined.max() >= num_train):
        return f"a partition indexes outside the {num_train} training samples"
    counts = torch.bincount(joined, minlength=num_train)
    if (counts > 1).any():
        return f"partitions overlap ({int((counts > 1).sum())} samples twice or more)"
    if (counts == 0).any():
        return f"partitions miss {int((counts == 0).sum())} training samples"
    return None


def _write_atomically(path: Path, content: bytes) -> None:
    _remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            _lock(f)  # held until the file is renamed: no other save removes it
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _remove_stale_temporaries(path: Path) -> None:
    """Remove what interrupted saves to ``path`` left: ``.NAME.XXXXXXXX.tmp`` files
    (``tempfile.mkstemp``'s names) that no live save holds locked."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp")
    for entry in path.parent.iterdir():
        if not pattern.fullmatch(entry.name) or entry.is_symlink():
            continue
        with contextlib.suppress(OSError), open(entry, "rb") as f:
            if _lock(f, wait=False):
                entry.unlink()


def _lock(f: Any, *, wait: bool = True) -> bool:
    """Lock open file ``f`` exclusively; False if ``wait`` is off and it is taken."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True
