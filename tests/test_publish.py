import json
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch

import fedlearn_lab as fl
from fedlearn_lab import publish


def test_publish_save_load_gives_the_same_predictions(digits, tmp_path):
    result = fl.run(fl.FedConfig(rounds=3, model="cnn"), digits)
    fl.save_model(result.model, tmp_path / "m", result.config)
    loaded, cfg = fl.load_model(tmp_path / "m")
    assert cfg == result.config
    with torch.no_grad():
        assert torch.equal(loaded(digits.x_test), result.model(digits.x_test))
    accuracy = (loaded(digits.x_test).argmax(1) == digits.y_test).double().mean().item()
    assert accuracy == result.history.final_accuracy


def test_device_accuracy_is_reported_per_device(digits):
    result = fl.run(fl.FedConfig(rounds=3, num_devices=12, participation=0.5), digits)
    assert len(result.device_accuracy) == 12
    assert all(0.0 <= a <= 1.0 for a in result.device_accuracy)
    assert min(result.device_accuracy) < max(result.device_accuracy)


def test_loading_something_else_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a saved fedlearn_lab model"):
        fl.load_model(tmp_path)


# ---- malformed folders: always a ValueError naming the file and what is wrong ----


@pytest.fixture(scope="module")
def saved(tmp_path_factory, digits):
    """A model folder as save_model writes it (read-only: tests copy it)."""
    cfg = fl.FedConfig(num_devices=5, rounds=1)
    path = tmp_path_factory.mktemp("saved") / "m"
    fl.save_model(fl.Federation(cfg, digits).publish(), path, cfg)
    return path


def _weights(path, change):
    state = torch.load(path / "model.pt", weights_only=True)
    change(state)
    torch.save(state, path / "model.pt")


def _meta(path, change):
    meta = json.loads((path / "config.json").read_text())
    change(meta)
    (path / "config.json").write_text(json.dumps(meta))


def _nan(state):
    state["fc1.weight"][0, 0] = float("nan")


BROKEN = {
    "NaN weights": (lambda p: _weights(p, _nan), "model.pt", "fc1.weight holds NaN"),
    "Inf weights": (
        lambda p: _weights(p, lambda s: s["fc2.bias"].fill_(float("inf"))),
        "model.pt",
        "fc2.bias holds NaN or Inf",
    ),
    "renamed key": (
        lambda p: _weights(p, lambda s: s.update(other=s.pop("fc1.weight"))),
        "model.pt",
        r"missing \['fc1.weight'\], unexpected \['other'\]",
    ),
    "wrong shape": (
        lambda p: _weights(p, lambda s: s.update({"fc1.weight": torch.zeros(3, 3)})),
        "model.pt",
        r"fc1.weight is torch.float32 \(3, 3\), expected torch.float32 \(64, 64\)",
    ),
    "wrong dtype": (
        lambda p: _weights(p, lambda s: s.update({"fc2.bias": s["fc2.bias"].double()})),
        "model.pt",
        "fc2.bias is torch.float64",
    ),
    "a list of tensors": (
        lambda p: torch.save([torch.zeros(2)], p / "model.pt"),
        "model.pt",
        "a list, not a dict",
    ),
    "model.pt missing": (lambda p: (p / "model.pt").unlink(), "model.pt", "missing"),
    "model.pt truncated": (
        lambda p: (p / "model.pt").write_bytes((p / "model.pt").read_bytes()[:999]),
        "model.pt",
        "not a state dict written by save_model",
    ),
    "model.pt is text": (
        lambda p: (p / "model.pt").write_text("hello"),
        "model.pt",
        "not a state dict",
    ),
    "model.pt is a pickle": (
        lambda p: (p / "model.pt").write_bytes(pickle.dumps({"fc1.weight": 1})),
        "model.pt",
        r"not a state dict written by save_model \(UnpicklingError\)$",
    ),
    "config.json missing": (
        lambda p: (p / "config.json").unlink(),
        "config.json",
        "missing",
    ),
    "config.json not UTF-8": (
        lambda p: (p / "config.json").write_bytes(b"\xff\xfe{"),
        "config.json",
        "not a saved fedlearn_lab model",
    ),
    "config.json a list": (
        lambda p: (p / "config.json").write_text("[1]"),
        "config.json",
        "a JSON list, not an object",
    ),
    "no input_shape": (
        lambda p: _meta(p, lambda m: m.pop("input_shape")),
        "config.json",
        "no 'input_shape'",
    ),
    "huge input_shape": (
        lambda p: _meta(p, lambda m: m.update(input_shape=[10**6, 10**6])),
        "config.json",
        "at most 262144 features",
    ),
    "num_classes a string": (
        lambda p: _meta(p, lambda m: m.update(num_classes="ten")),
        "config.json",
        r"num_classes must be an integer in \[2, 65536\], got 'ten'",
    ),
    "config that does not validate": (
        lambda p: _meta(p, lambda m: m["config"].update(hidden=-3)),
        "config.json",
        "hidden must be an integer",
    ),
    "config of another model": (
        lambda p: _meta(p, lambda m: m["config"].update(hidden=32)),
        "model.pt",
        "does not hold the model that config.json describes",
    ),
    "config no dict": (
        lambda p: _meta(p, lambda m: m.update(config=[1])),
        "config.json",
        "does not describe a model",
    ),
}


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_malformed_model_folder_is_a_value_error_naming_the_file(
    saved, tmp_path, case
):
    breaks, file_name, what = BROKEN[case]
    path = Path(shutil.copytree(saved, tmp_path / "m"))
    breaks(path)
    with pytest.raises(ValueError, match=re.escape(str(path / file_name))) as info:
        fl.load_model(path)
    assert re.search(what, str(info.value)), str(info.value)
    assert "weights_only" not in str(info.value)  # never suggest unsafe loading


def test_an_oversized_file_is_refused_before_it_is_read(saved, tmp_path, monkeypatch):
    path = Path(shutil.copytree(saved, tmp_path / "m"))
    with (path / "model.pt").open("ab") as f:
        f.truncate(3 << 20)  # sparse: 3 MiB, far more than this small model needs

    def no_reading(*args, **kwargs):
        raise AssertionError("torch.load was called on an oversized file")

    monkeypatch.setattr(torch, "load", no_reading)
    with pytest.raises(ValueError, match=r"model.pt is 3145728 bytes, more than the"):
        fl.load_model(path)
    (path / "config.json").write_text(" " * (publish.MAX_CONFIG_BYTES + 1))
    with pytest.raises(ValueError, match=r"config.json is 1048577 bytes"):
        fl.load_model(path)


def test_a_missing_folder_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="nowhere is not a saved fedlearn_lab model"):
        fl.load_model(tmp_path / "nowhere")


class _Touch:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_crafted_pickle_runs_nothing(saved, tmp_path):
    path = Path(shutil.copytree(saved, tmp_path / "m"))
    ran = tmp_path / "code-ran"
    (path / "model.pt").write_bytes(pickle.dumps({"fc1.weight": _Touch(ran)}))
    with pytest.raises(ValueError, match="not a state dict written by save_model"):
        fl.load_model(path)
    assert not ran.exists()
    pickle.loads((path / "model.pt").read_bytes())  # the oracle: unsafe loading runs it
    assert ran.exists()
