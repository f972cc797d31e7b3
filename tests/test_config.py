import dataclasses

import pytest

import fedlearn_lab as fl


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("participation", 0.0, "(0, 1]"),
        ("participation", 1.5, "(0, 1]"),
        ("skew", 0.0, "> 0"),
        ("skew", -1.0, "> 0"),
        ("num_devices", 0, ">= 1"),
        ("shared_fraction", 1.0, "[0, 1)"),
        ("shared_fraction", -0.1, "[0, 1)"),
        ("server_steps", -1, ">= 0"),
        ("local_lr", 0.0, "> 0"),
        ("server_lr", -0.1, "> 0"),
        ("batch_size", 0, ">= 1"),
        ("server_batch_size", 0, ">= 1"),
        ("local_epochs", 0, ">= 1"),
        ("rounds", 0, ">= 1"),
        ("partition", "random", "'iid'"),
        ("model", "resnet", "'mlp'"),
        ("target_accuracy", 0.0, "(0, 1]"),
        ("target_accuracy", 1.5, "(0, 1]"),
        ("participation", float("nan"), "(0, 1]"),
        ("rounds", 2.5, ">= 1"),
        ("rounds", True, ">= 1"),
    ],
)
def test_invalid_field_raises_naming_field_value_and_range(field, value, allowed):
    with pytest.raises(ValueError) as info:
        fl.FedConfig(**{field: value})
    message = str(info.value)
    assert message.startswith(field)
    assert repr(value) in message
    assert allowed in message


def test_shards_need_whole_number_of_classes():
    with pytest.raises(ValueError, match="skew .*whole number"):
        fl.FedConfig(partition="shards", skew=1.5)


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
