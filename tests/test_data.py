import numpy as np
import pytest
import torch

import fedlearn_lab as fl
from fedlearn_lab.data import check_dataset


def test_digits_ship_offline_with_a_stratified_split(digits):
    assert digits.num_classes == 10 and digits.input_shape == (1, 8, 8)
    assert len(digits.y_train) + len(digits.y_test) == 1797
    assert (
        digits.x_train.dtype == torch.float32
        and 0 <= digits.x_train.min() <= digits.x_train.max() <= 1
    )
    train = np.bincount(digits.y_train.numpy()) / len(digits.y_train)
    test = np.bincount(digits.y_test.numpy()) / len(digits.y_test)
    assert np.abs(train - test).max() < 0.01


def test_synthetic_follows_the_recipe_and_has_a_natural_split():
    data = fl.synthetic(0.5, 0.5, num_devices=30, seed=0)
    assert data.num_features == 60 and data.num_classes == 10
    sizes = np.array([len(p) for p in data.natural_partition])
    assert len(sizes) == 30 and sizes.min() >= int(0.9 * 50)
    joined = np.concatenate(data.natural_partition)
    assert np.array_equal(joined, np.arange(len(data.y_train)))
    again = fl.synthetic(0.5, 0.5, num_devices=30, seed=0)
    assert torch.equal(again.x_train, data.x_train)
    assert not torch.equal(
        fl.synthetic(0.5, 0.5, seed=1).x_train[:10], data.x_train[:10]
    )


def test_synthetic_beta_moves_device_inputs_apart():
    def spread(beta):
        data = fl.synthetic(0.0, beta, num_devices=20, seed=0)
        means = torch.stack([data.x_train[p].mean(0) for p in data.natural_partition])
        return means.std(0).mean().item()

    assert spread(0.0) < spread(1.0)


def test_natural_partition_trains(digits):
    data = fl.synthetic(0.0, 0.0, num_devices=10, seed=0)
    cfg = fl.FedConfig(num_devices=10, partition="natural", participation=0.5, rounds=2)
    fed = fl.Federation(cfg, data)
    assert len(fed.device_indices) == 10
    assert len(fed.run()) == 2
    with pytest.raises(ValueError, match="num_devices must be 10"):
        fl.Federation(cfg.replace(num_devices=5), data)
    with pytest.raises(ValueError, match="natural split"):
        fl.Federation(cfg, digits)


def test_from_arrays_accepts_numpy_and_torch_and_remaps_labels():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 2, 3))
    y = np.repeat([3, 7], 50)
    data = fl.from_arrays(X, y)
    assert data.input_shape == (2, 3) and data.num_classes == 2
    assert set(data.y_train.tolist()) == {0, 1}
    same = fl.from_arrays(torch.from_numpy(X), torch.from_numpy(y))
    assert torch.equal(same.x_train, data.x_train)


@pytest.mark.parametrize(
    ("X", "y", "match"),
    [
        (np.zeros((10, 2)), np.zeros(9, dtype=int), "same length"),
        (np.zeros((10, 2)), np.linspace(0, 1, 10), "integer class labels"),
        (np.full((10, 2), np.nan), np.arange(10) % 2, "NaN or Inf"),
        (np.full((10, 2), np.inf), np.arange(10) % 2, "NaN or Inf"),
        (np.zeros((10, 2)), np.zeros(10, dtype=int), "at least two classes"),
        (np.zeros(10), np.arange(10) % 2, "per sample"),
        (np.array([["a", "b"]] * 10), np.arange(10) % 2, "real numbers"),
    ],
)
def test_from_arrays_rejects_bad_input_clearly(X, y, match):
    with pytest.raises(ValueError, match=match):
        fl.from_arrays(X, y)


def test_load_dataset_by_name():
    assert fl.load_dataset("digits").name == "digits"
    assert fl.load_dataset("synthetic:0.5,1", seed=0).name == "synthetic(0.5,1)"
    for bad in ("mnist", "synthetic:0.5", "synthetic:a,b"):
        with pytest.raises(ValueError, match="dataset must be 'digits' or"):
            fl.load_dataset(bad)


@pytest.mark.parametrize("bad", [{"x_train": 1}, "digits", [1, 2], 3])
def test_a_wrong_data_type_is_a_type_error_naming_the_argument(digits, bad):
    cfg = fl.FedConfig(num_devices=5, rounds=1)
    with pytest.raises(TypeError, match=r"^data must be a fedlearn_lab Dataset"):
        fl.Federation(cfg, data=bad)
    with pytest.raises(TypeError, match=r"^data must be a fedlearn_lab Dataset"):
        fl.run(cfg, bad)
    with pytest.raises(TypeError, match=r"^train must be a fedlearn_lab Dataset"):
        check_dataset(bad, name="train")


def _edited(digits, **changes):
    fields = {
        name: getattr(digits, name)
        for name in ("x_train", "y_train", "x_test", "y_test", "num_classes", "name")
    }
    return fl.Dataset(**{**fields, "input_shape": digits.input_shape, **changes})


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: {"x_train": d.x_train[:-5]}, "same number"),
        (lambda d: {"y_train": d.y_train.clone().index_fill_(0, torch.tensor([0]), 10)},
         r"labels in \[0, 9\], got labels from 0 to 10"),
        (lambda d: {"y_test": d.y_test - 1}, r"y_test must hold labels in \[0, 9\]"),
        (lambda d: {"x_test": d.x_test.double()}, "x_test must be a 2-D float32"),
        (lambda d: {"y_train": d.y_train.int()}, "y_train must be a 1-D int64"),
        (lambda d: {"x_train": d.x_train.clone().fill_(float("nan"))}, "NaN or Inf"),
        (lambda d: {"x_test": d.x_test[:, :10]}, "must agree"),
        (lambda d: {"num_classes": "10"}, "num_classes must be an int"),
    ],
)  # fmt: skip
def test_a_malformed_dataset_is_a_value_error_naming_the_part(digits, change, match):
    bad = _edited(digits, **change(digits))
    with pytest.raises(ValueError, match=match):
        check_dataset(bad)
    with pytest.raises(ValueError, match=match):
        fl.Federation(fl.FedConfig(num_devices=5, rounds=1), bad)
    assert check_dataset(digits) is digits
