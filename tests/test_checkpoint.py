"""Checkpoints: a resumed run equals an uninterrupted one; bad files are refused."""

from __future__ import annotations

import dataclasses
import os
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
