import pytest
import torch

import fedlearn_lab as fl


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
