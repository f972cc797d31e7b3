import dataclasses
import json
import re

import numpy as np
import pytest

import fedlearn_lab as fl
from fedlearn_lab.config import FLOAT32_MAX, LIMITS


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("participation", 0.0, "(0, 1]"),
        ("participation", 1.5, "(0, 1]"),
        ("skew", 0.0, "> 0"),
        ("skew", -1.0, "> 0"),
        ("num_devices", 0, "[1, 10000]"),
        ("shared_fraction", 1.0, "[0, 1)"),
        ("shared_fraction", -0.1, "[0, 1)"),
        ("server_steps", -1, "[0, 100000]"),
        ("local_lr", 0.0, "(0, 3.4028234663852886e+38]"),
        ("server_lr", -0.1, "(0, 3.4028234663852886e+38]"),
        ("batch_size", 0, "[1, 100000]"),
        ("server_batch_size", 0, "[1, 100000]"),
        ("local_epochs", 0, "[1, 1000]"),
        ("rounds", 0, "[1, 100000]"),
        ("partition", "random", "'iid'"),
        ("model", "resnet", "'mlp'"),
        ("target_accuracy", 0.0, "(0, 1]"),
        ("target_accuracy", 1.5, "(0, 1]"),
        ("participation", float("nan"), "(0, 1]"),
        ("rounds", 2.5, "[1, 100000]"),
        ("rounds", True, "[1, 100000]"),
        ("min_device_size", 0, ">= 1"),
        # Absurd sizes: refused with the limit named, before any allocation.
        ("local_epochs", 10**12, "[1, 1000]"),
        ("hidden", 10**9, "[1, 4096]"),
        ("num_devices", 10**9, "[1, 10000]"),
        ("rounds", 10**12, "[1, 100000]"),
        ("batch_size", 10**12, "[1, 100000]"),
        ("server_batch_size", 10**12, "[1, 100000]"),
        ("server_steps", 10**9, "[0, 100000]"),
        # Rates that overflow float32 (the vectorized engine's raw RuntimeError).
        ("local_lr", 1e308, "3.4028234663852886e+38]"),
        ("server_lr", 3.5e38, "3.4028234663852886e+38]"),
        ("local_lr", 3.4028235e38, "3.4028234663852886e+38]"),
        ("local_lr", float("inf"), "3.4028234663852886e+38]"),
        # Log-normal weights of sigma ~400 overflow into empty devices.
        ("quantity_skew", 400.0, "[0, 10]"),
        ("quantity_skew", 10.5, "[0, 10]"),
    ],
)
def test_invalid_field_raises_naming_field_value_and_range(field, value, allowed):
    with pytest.raises(ValueError) as info:
        fl.FedConfig(**{field: value})
    message = str(info.value)
    assert message.startswith(field)
    assert repr(value) in message
    assert allowed in message


def test_shards_need_whole_number_of_shards():
    with pytest.raises(ValueError, match="skew .*whole number of shards per device"):
        fl.FedConfig(partition="shards", skew=1.5)


def test_limits_themselves_are_allowed():
    cfg = fl.FedConfig(**LIMITS, local_lr=FLOAT32_MAX, server_lr=FLOAT32_MAX)
    assert cfg.hidden == LIMITS["hidden"] and cfg.local_lr == FLOAT32_MAX
    assert fl.FedConfig(quantity_skew=10, partition="iid").quantity_skew == 10
    assert FLOAT32_MAX == float(np.finfo(np.float32).max)  # the oracle


@pytest.mark.parametrize(
    ("field", "value", "plain"),
    [
        ("num_devices", np.int64(10), 10),
        ("rounds", np.int32(3), 3),
        ("seed", np.uint8(7), 7),
        ("participation", np.float32(0.25), 0.25),
        ("skew", np.float64(0.3), 0.3),
        ("local_lr", np.float16(0.5), 0.5),
        ("target_accuracy", np.float32(0.75), 0.75),
        ("deadline", np.int64(2), 2),
        ("partition", np.str_("iid"), "iid"),
        ("shared_classes", (np.int64(1), np.int8(2)), (1, 2)),
        ("shared_classes", np.arange(3).tolist(), (0, 1, 2)),
    ],
)
def test_numpy_scalars_are_accepted_and_stored_as_python_ones(field, value, plain):
    cfg = fl.FedConfig(**{field: value})
    stored = getattr(cfg, field)
    assert stored == plain and type(stored) is type(plain)
    if field == "shared_classes":
        assert all(type(c) is int for c in stored)
    same = fl.FedConfig(**{field: plain})
    assert cfg == same and hash(cfg) == hash(same)
    assert json.loads(json.dumps(cfg.to_dict())) == same.to_dict()


def test_numpy_values_of_the_wrong_kind_are_still_refused():
    with pytest.raises(ValueError, match="num_devices must be an integer"):
        fl.FedConfig(num_devices=np.float64(10.0))
    with pytest.raises(ValueError, match="num_devices must be an integer"):
        fl.FedConfig(num_devices=np.bool_(True))
    with pytest.raises(ValueError, match="participation must be a number"):
        fl.FedConfig(participation=np.float32("nan"))


def test_server_steps_need_a_shared_dataset():
    with pytest.raises(ValueError, match="server_steps .*shared_fraction is 0"):
        fl.FedConfig(shared_fraction=0.0, server_steps=5)
    assert fl.FedConfig(shared_fraction=0.0, server_steps=0).server_steps == 0


def test_config_is_frozen_and_hashable():
    cfg = fl.FedConfig(shared_classes=[1, 2])
    assert cfg.shared_classes == (1, 2)
    assert hash(cfg) == hash(fl.FedConfig(shared_classes=(1, 2)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.rounds = 3  # type: ignore[misc]


def test_dict_round_trip_and_differences():
    cfg = fl.FedConfig(participation=0.3, shared_classes=(0, 1))
    assert fl.FedConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.replace(skew=0.1).differences(cfg) == {"skew": 0.1}
    with pytest.raises(ValueError, match="no field"):
        fl.FedConfig.from_dict({"participaton": 0.3})


QUICK_RUN = {"num_devices": 10, "participation": 0.5, "rounds": 2, "local_epochs": 1}


@pytest.mark.parametrize("engine", ["vectorized", "reference"])
@pytest.mark.parametrize("rate", [1e38, FLOAT32_MAX])
def test_the_largest_allowed_server_lr_diverges_cleanly_in_both_engines(
    digits, engine, rate
):
    cfg = fl.FedConfig(server_lr=rate, engine=engine, **QUICK_RUN)
    with pytest.raises(fl.DivergedError, match=re.escape(f"server_lr, now {rate:g}")):
        fl.run(cfg, digits)


@pytest.mark.parametrize("engine", ["vectorized", "reference"])
@pytest.mark.parametrize("rate", [1e30, FLOAT32_MAX])
def test_the_largest_allowed_local_lr_never_gives_a_raw_error(digits, engine, rate):
    # Every update is then NaN/Inf: the round either raises DivergedError naming
    # local_lr, or (once such rounds keep the previous model) records the rejections.
    cfg = fl.FedConfig(local_lr=rate, engine=engine, **QUICK_RUN)
    try:
        history = fl.run(cfg, digits).history
    except fl.DivergedError as err:
        assert f"local_lr (now {rate:g})" in str(
            err
        ) or f"local_lr, now {rate:g}" in str(err)
        return
    assert all(r.kept_previous for r in history)
    assert all(why == "non-finite" for r in history for _, why in r.failures)
