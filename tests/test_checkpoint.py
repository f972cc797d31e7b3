"""Checkpoints: a resumed run equals an uninterrupted one; bad files are refused."""

from __future__ import annotations

import dataclasses
import fcntl
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

import fedlearn_lab as fl
from fedlearn_lab import checkpoint

BASE = fl.FedConfig(num_devices=20, participation=0.5, local_epochs=1, rounds=6)
FAULTY = BASE.replace(
    dropout=0.2,
    deadline=2.0,
    malicious_fraction=0.2,
    attack="noise",
    aggregator="median",
)


@pytest.fixture(scope="module")
def digits():
    return fl.load_digits()


def _same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("cfg", [BASE, FAULTY], ids=["plain", "faults+attack"])
@pytest.mark.parametrize("stop_at", [0, 2, 5])
def test_resumed_run_equals_uninterrupted_run(digits, tmp_path, cfg, stop_at):
    whole = fl.Federation(cfg, digits)
    whole.run()
    first = fl.Federation(cfg, digits)
    for _ in range(stop_at):
        first.step()
    first.save(tmp_path / "run.ckpt")
    seconds = [r.seconds for r in first.history]
    del first
    resumed = fl.Federation.load(tmp_path / "run.ckpt")
    assert resumed.round == stop_at
    resumed.run()
    assert resumed.history.records == whole.history.records
    assert [r.seconds for r in resumed.history][:stop_at] == seconds
    assert _same_weights(resumed.state.weights, whole.state.weights)
    assert resumed.device_accuracy() == whole.device_accuracy()


@pytest.mark.parametrize(
    ("method", "carried"), [("scaffold", "controls"), ("fedadam", "moments")]
)
def test_a_checkpoint_resumes_scaffold_and_fedadam_bit_for_bit(
    digits, tmp_path, method, carried
):
    # SCAFFOLD's controls (c and every device's c_i, also those not sampled yet) and
    # FedAdam's moments (m, v) travel in the checkpoint.
    cfg = BASE.replace(participation=0.25, **fl.METHODS[method])
    whole = fl.Federation(cfg, digits)
    whole.run()
    first = fl.Federation(cfg, digits)
    for _ in range(3):
        first.step()
    resumed = fl.Federation.load(first.save(tmp_path / "run.ckpt"))
    for saved, back in zip(
        getattr(first.state, carried), getattr(resumed.state, carried), strict=True
    ):
        assert _same_weights(back, saved)
    resumed.run()
    assert resumed.history.records == whole.history.records
    assert _same_weights(resumed.state.weights, whole.state.weights)
    for a, b in zip(
        getattr(resumed.state, carried), getattr(whole.state, carried), strict=True
    ):
        assert _same_weights(a, b)
    # Resuming without that memory would change the run: the test can tell.
    forgetful = fl.Federation.load(tmp_path / "run.ckpt")
    forgetful.state = dataclasses.replace(forgetful.state, **{carried: None})
    if method == "scaffold":  # zero controls instead of none (the round needs them)
        zero = fl.Federation(cfg, digits).state.controls
        forgetful.state = dataclasses.replace(forgetful.state, controls=zero)
    forgetful.run()
    assert forgetful.history.records != whole.history.records


def test_checkpoint_keeps_arrays_data_and_natural_partition(tmp_path):
    data = fl.synthetic(0.5, 0.5, num_devices=6, seed=3)
    cfg = fl.FedConfig(num_devices=6, partition="natural", local_epochs=1, rounds=2)
    fed = fl.Federation(cfg, data)
    fed.step()
    fed.save(tmp_path / "s.ckpt")
    back = fl.Federation.load(tmp_path / "s.ckpt")
    assert back.data.name == data.name and back.data.input_shape == data.input_shape
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(back.data, name), getattr(data, name))
    assert all(
        np.array_equal(a, b)
        for a, b in zip(
            back.data.natural_partition, data.natural_partition, strict=True
        )
    )
    assert all(
        torch.equal(a, b)
        for a, b in zip(back.device_indices, fed.device_indices, strict=True)
    )
    assert back.history.records == fed.history.records and back.cfg == cfg


def test_save_is_atomic_and_leaves_no_temporary_files(digits, tmp_path, monkeypatch):
    fed = fl.Federation(BASE, digits)
    path = fed.save(tmp_path / "run.ckpt")
    before = path.read_bytes()
    fed.step()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        fed.save(path)
    assert path.read_bytes() == before  # the old checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.ckpt"]


def _checkpoint_bytes(digits, tmp_path) -> bytes:
    fed = fl.Federation(BASE, digits)
    fed.step()
    return fed.save(tmp_path / "good.ckpt").read_bytes()


@pytest.mark.parametrize("cut", [0.5, 0.99, 10])
def test_truncated_checkpoint_is_refused_with_the_file_name(digits, tmp_path, cut):
    raw = _checkpoint_bytes(digits, tmp_path)
    bad = tmp_path / "truncated.ckpt"
    bad.write_bytes(raw[: int(len(raw) * cut)] if cut < 1 else raw[:cut])
    with pytest.raises(
        ValueError, match=r"truncated\.ckpt is not a readable fedlearn_lab"
    ):
        fl.Federation.load(bad)


@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
def test_corrupted_byte_is_refused(digits, tmp_path, where):
    raw = bytearray(_checkpoint_bytes(digits, tmp_path))
    raw[int(len(raw) * where)] ^= 0x20
    bad = tmp_path / "corrupt.ckpt"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupt.ckpt"):
        fl.Federation.load(bad)


def _zip(path, members: dict[str, bytes | str]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return path


def _members(digits, tmp_path) -> tuple[bytes, bytes]:
    _checkpoint_bytes(digits, tmp_path)
    with zipfile.ZipFile(tmp_path / "good.ckpt") as zf:
        return zf.read("meta.json"), zf.read("tensors.pt")


def test_foreign_files_are_refused(digits, tmp_path):
    model = fl.Federation(BASE, digits).publish()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    (tmp_path / "notes.txt").write_text("hello")
    _zip(tmp_path / "other.zip", {"meta.json": '{"format": "someone-else/2"}'})
    _zip(tmp_path / "list.zip", {"meta.json": "[1, 2]"})
    for name in ("weights.pt", "notes.txt", "other.zip", "list.zip"):
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            fl.Federation.load(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        fl.Federation.load(tmp_path / "missing.ckpt")


def test_checkpoint_with_a_model_that_does_not_fit_the_config_is_refused(
    digits, tmp_path
):
    meta, tensors = _members(digits, tmp_path)
    edited = meta.replace(b'"hidden": 64', b'"hidden": 32')
    assert edited != meta
    bad = _zip(tmp_path / "edited.ckpt", {"meta.json": edited, "tensors.pt": tensors})
    with pytest.raises(ValueError, match="does not fit the config"):
        fl.Federation.load(bad)


def test_format_tag_is_checked(digits, tmp_path):
    meta, tensors = _members(digits, tmp_path)
    future = meta.replace(checkpoint.FORMAT.encode(), b"fedlearn_lab.checkpoint/9")
    bad = _zip(tmp_path / "future.ckpt", {"meta.json": future, "tensors.pt": tensors})
    with pytest.raises(ValueError, match="checkpoint/9"):
        fl.Federation.load(bad)


# ---- a checkpoint that reads but was edited ---------------------------------------


def _payload(digits, tmp_path, cfg=BASE):
    fed = fl.Federation(cfg, digits)
    fed.step()
    with zipfile.ZipFile(fed.save(tmp_path / "good.ckpt")) as zf:
        meta = json.loads(zf.read("meta.json"))
        payload = torch.load(io.BytesIO(zf.read("tensors.pt")), weights_only=True)
    return meta, payload


def _write(path, meta, payload):
    tensors = io.BytesIO()
    torch.save(payload, tensors)
    return _zip(path, {"meta.json": json.dumps(meta), "tensors.pt": tensors.getvalue()})


def _set(where, key, value):
    where[key] = value


EDITS = {
    "short x_train": (
        lambda m, p: _set(p["data"], "x_train", p["data"]["x_train"][:-5]),
        "must hold the same number",
    ),
    "label out of range": (
        lambda m, p: p["data"]["y_train"].index_fill_(0, torch.tensor([3]), 99),
        r"labels in \[0, 9\], got labels from 0 to 99",
    ),
    "NaN features": (
        lambda m, p: p["data"]["x_test"].index_fill_(0, torch.tensor([0]), math.nan),
        "x_test holds NaN or Inf",
    ),
    "overlapping partitions": (
        lambda m, p: _set(p["device_indices"], 1, p["device_indices"][0].clone()),
        r"partitions overlap",
    ),
    "a sample on no device": (
        lambda m, p: _set(p["device_indices"], 1, p["device_indices"][1][1:]),
        "partitions miss 1 training samples",
    ),
    "an empty device": (
        lambda m, p: _set(p["device_indices"], 1, p["device_indices"][1][:0]),
        "holds 0 samples, fewer than min_device_size=2",
    ),
    "a device too many": (
        lambda m, p: p["device_indices"].append(p["device_indices"][0]),
        "21 device partitions for 20 devices",
    ),
    "float partitions": (
        lambda m, p: _set(p, "shared_indices", p["shared_indices"].double()),
        "1-D int64 tensors",
    ),
    "an index past the end": (
        lambda m, p: p["shared_indices"].index_fill_(0, torch.tensor([0]), 10**6),
        "outside the 1437 training samples",
    ),
    "an edited seed": (
        lambda m, p: _set(m["config"], "seed", 7),
        "its config does not give its partitions",
    ),
    "an edited partition": (
        lambda m, p: _set(m["config"], "partition", "iid"),
        "its config does not give its partitions",
    ),
    "NaN global weights": (
        lambda m, p: p["state"]["weights"]["fc1.weight"].fill_(math.nan),
        "the saved global model does not fit the config: fc1.weight holds NaN",
    ),
    "a renamed weight": (
        lambda m, p: p["state"]["weights"].update(
            x=p["state"]["weights"].pop("fc2.bias")
        ),
        r"missing \['fc2.bias'\], unexpected \['x'\]",
    ),
    "a round past the budget": (
        lambda m, p: _set(p["state"], "round_idx", 99),
        r"round 99 is not in \[0, rounds=6\]",
    ),
    "history cut": (
        lambda m, p: _set(p, "history", []),
        "0 history records for 1 rounds",
    ),
    "history renumbered": (
        lambda m, p: _set(p["history"][0], "round", 5),
        "1 history records for 1 rounds",
    ),
}


@pytest.mark.parametrize("case", sorted(EDITS))
def test_an_edited_checkpoint_is_refused_naming_the_file_and_the_problem(
    digits, tmp_path, case
):
    edit, what = EDITS[case]
    meta, payload = _payload(digits, tmp_path)
    edit(meta, payload)
    bad = _write(tmp_path / "edited.ckpt", meta, payload)
    with pytest.raises(
        ValueError, match=r"edited\.ckpt is not a (valid|readable)"
    ) as e:
        fl.Federation.load(bad)
    assert re.search(what, str(e.value)), str(e.value)


def test_non_finite_momentum_is_refused(digits, tmp_path):
    meta, payload = _payload(digits, tmp_path, BASE.replace(server_momentum="fedavgm"))
    payload["state"]["momentum"]["fc2.bias"].fill_(math.inf)
    bad = _write(tmp_path / "momentum.ckpt", meta, payload)
    with pytest.raises(ValueError, match="saved momentum does not fit the config"):
        fl.Federation.load(bad)


def test_an_unedited_payload_written_back_loads(digits, tmp_path):
    meta, payload = _payload(digits, tmp_path)  # the helpers themselves are sound
    assert fl.Federation.load(_write(tmp_path / "same.ckpt", meta, payload)).round == 1


# ---- member sizes are checked before anything is read -----------------------------


def _declare_size(path, member: str, size: int) -> None:
    """Rewrite the size that the zip's central directory declares for ``member``."""
    raw = bytearray(path.read_bytes())
    end = raw.rindex(b"PK\x05\x06")  # end of central directory: where it starts
    at = int.from_bytes(raw[end + 16 : end + 20], "little")
    for _ in range(int.from_bytes(raw[end + 10 : end + 12], "little")):
        assert raw[at : at + 4] == b"PK\x01\x02"
        lengths = [
            int.from_bytes(raw[at + i : at + i + 2], "little") for i in (28, 30, 32)
        ]
        if raw[at + 46 : at + 46 + lengths[0]] == member.encode():
            raw[at + 24 : at + 28] = size.to_bytes(4, "little")
            path.write_bytes(bytes(raw))
            return
        at += 46 + sum(lengths)
    raise AssertionError(f"no {member} in {path}")


@pytest.mark.parametrize(
    ("member", "size"), [("tensors.pt", 0xFFFF_FFF0), ("meta.json", 5 << 20)]
)
def test_a_member_declaring_a_huge_size_is_refused_unread(
    digits, tmp_path, monkeypatch, member, size
):
    path = fl.Federation(BASE, digits).save(tmp_path / "bomb.ckpt")
    _declare_size(path, member, size)
    with zipfile.ZipFile(path) as zf:
        assert zf.getinfo(member).file_size == size  # the forgery took

    read = zipfile.ZipFile.read

    def read_all_but_the_bomb(zf, name, *args):
        assert name != member, f"{member} was read"
        return read(zf, name, *args)

    monkeypatch.setattr(zipfile.ZipFile, "read", read_all_but_the_bomb)
    with pytest.raises(
        ValueError, match=rf"bomb\.ckpt is not a valid .*its {member} declares {size}"
    ):
        fl.Federation.load(path)


def test_a_compressed_zip_bomb_is_refused(digits, tmp_path):
    meta, _ = _members(digits, tmp_path)
    bomb = tmp_path / "deflated.ckpt"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("meta.json", meta)
        zf.writestr("tensors.pt", bytes(20 << 20))  # 20 MiB of zeros in ~20 kB
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(ValueError, match=r"its tensors.pt declares 20971520 bytes"):
        fl.Federation.load(bomb)


# ---- temporary files of interrupted saves -----------------------------------------


def test_save_removes_the_temporary_files_of_earlier_interrupted_saves(
    digits, tmp_path
):
    fed = fl.Federation(BASE, digits)
    stale = [".run.ckpt.abcd_12x.tmp", ".run.ckpt.zz99zz99.tmp"]
    kept = [
        ".run.ckpt.old.abcd1234.tmp",  # another target's (run.ckpt.old)
        ".other.ckpt.abcd1234.tmp",
        "run.ckpt.abcd1234.tmp",
        ".run.ckpt.ABCD1234.tmp",  # not a name mkstemp makes
        ".run.ckpt.abcd123.tmp",
        "notes.txt",
    ]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"x" * 100)
    live = tmp_path / ".run.ckpt.live0000.tmp"  # a concurrent save still writing
    live.write_bytes(b"x")
    with open(live, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        fed.save(tmp_path / "run.ckpt")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([*kept, live.name, "run.ckpt"])
    assert fl.Federation.load(tmp_path / "run.ckpt").round == 0


def test_a_save_killed_before_its_rename_is_cleaned_up_by_the_next(tmp_path):
    # A real interrupted save: the child is SIGKILLed between writing and renaming.
    code = (
        "import os, signal, fedlearn_lab as fl\n"
        "os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
        "cfg = fl.FedConfig(num_devices=5, rounds=2)\n"
        f"fl.Federation(cfg).save({str(tmp_path / 'run.ckpt')!r})\n"
    )
    child = subprocess.run([sys.executable, "-c", code], timeout=120)
    assert child.returncode == -signal.SIGKILL
    (orphan,) = tmp_path.glob(".run.ckpt.*.tmp")
    assert orphan.stat().st_size > 0
    fed = fl.Federation(fl.FedConfig(num_devices=5, rounds=2))
    fed.save(tmp_path / "run.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.ckpt"]
