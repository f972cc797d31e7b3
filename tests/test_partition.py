import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fedlearn_lab as fl
from fedlearn_lab.partition import dirichlet, iid, label_counts, shards, shared_split


def _labels(seed: int, n: int, classes: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, n)


def _assert_disjoint_complete_nonempty(parts: list[np.ndarray], n: int) -> None:
    assert all(len(p) > 0 for p in parts)
    joined = np.concatenate(parts)
    assert len(joined) == n
    assert np.array_equal(np.sort(joined), np.arange(n))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(20, 600),
    devices=st.integers(1, 20),
    alpha=st.floats(0.01, 100),
    sigma=st.sampled_from([0.0, 0.5, 2.0]),
    seed=st.integers(0, 10_000),
)
def test_dirichlet_is_disjoint_complete_nonempty(n, devices, alpha, sigma, seed):
    labels = _labels(seed, n, 10)
    parts = dirichlet(
        labels, devices, alpha, np.random.default_rng(seed), quantity_skew=sigma
    )
    assert len(parts) == devices
    _assert_disjoint_complete_nonempty(parts, n)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 500), devices=st.integers(1, 50), seed=st.integers(0, 10_000))
def test_iid_sizes_differ_by_at_most_one(n, devices, seed):
    if devices > n:
        with pytest.raises(ValueError, match="num_devices"):
            iid(n, devices, np.random.default_rng(seed))
        return
    parts = iid(n, devices, np.random.default_rng(seed))
    _assert_disjoint_complete_nonempty(parts, n)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(50, 500),
    devices=st.integers(1, 20),
    sigma=st.floats(0.1, 3),
    seed=st.integers(0, 999),
)
def test_quantity_skew_keeps_every_device_and_spreads_sizes(n, devices, sigma, seed):
    parts = iid(n, devices, np.random.default_rng(seed), quantity_skew=sigma)
    _assert_disjoint_complete_nonempty(parts, n)


def test_quantity_skew_makes_sizes_unequal():
    parts = iid(1000, 20, np.random.default_rng(0), quantity_skew=1.5)
    sizes = np.array([len(p) for p in parts])
    assert sizes.max() > 3 * sizes.min()


@settings(max_examples=40, deadline=None)
@given(devices=st.integers(10, 30), k=st.integers(1, 3), seed=st.integers(0, 999))
def test_shards_give_about_k_classes_per_device(devices, k, seed):
    labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(10), 60))
    parts = shards(labels, devices, k, np.random.default_rng(seed))
    _assert_disjoint_complete_nonempty(parts, 600)
    classes = [len(np.unique(labels[p])) for p in parts]
    # A shard (at most one class long here) may straddle one class boundary.
    assert max(classes) <= 2 * k


def test_one_class_shards_are_nearly_pure(digits):
    labels = digits.y_train.numpy()
    parts = shards(labels, 50, 1, np.random.default_rng(0))
    counts = label_counts(labels, parts, 10)
    purity = counts.max(axis=1) / counts.sum(axis=1)
    assert np.median(purity) == 1.0


def test_too_many_shards_is_a_clear_error():
    with pytest.raises(ValueError, match="num_devices \\* skew"):
        shards(np.zeros(10, dtype=int), 6, 2, np.random.default_rng(0))


def test_smaller_alpha_means_more_label_skew(digits):
    labels = digits.y_train.numpy()

    def mean_classes(alpha):
        parts = dirichlet(labels, 30, alpha, np.random.default_rng(0))
        return np.mean([len(np.unique(labels[p])) for p in parts])

    assert mean_classes(0.05) < mean_classes(1.0) < mean_classes(100.0)


def test_shared_split_is_class_balanced_and_disjoint(digits):
    labels = digits.y_train.numpy()
    shared, rest = shared_split(labels, 0.1, np.random.default_rng(0), num_classes=10)
    assert len(shared) == round(0.1 * len(labels))
    counts = np.bincount(labels[shared], minlength=10)
    assert counts.max() - counts.min() <= 1
    assert len(np.intersect1d(shared, rest)) == 0
    assert len(shared) + len(rest) == len(labels)


def test_biased_shared_split_draws_only_named_classes(digits):
    labels = digits.y_train.numpy()
    shared, _ = shared_split(
        labels, 0.1, np.random.default_rng(0), num_classes=10, classes=(0, 1, 2)
    )
    assert set(np.unique(labels[shared])) == {0, 1, 2}
    with pytest.raises(ValueError, match="shared_classes"):
        shared_split(
            labels, 0.1, np.random.default_rng(0), num_classes=10, classes=(3, 12)
        )


@pytest.mark.parametrize(
    "partition,skew", [("iid", 1.0), ("dirichlet", 0.3), ("shards", 2)]
)
def test_federation_covers_training_set_once(digits, partition, skew):
    fed = fl.Federation(
        fl.FedConfig(num_devices=40, partition=partition, skew=skew), digits
    )
    parts = [p.numpy() for p in fed.device_indices] + [fed.shared_indices.numpy()]
    _assert_disjoint_complete_nonempty(parts, len(digits.y_train))


def test_more_devices_than_samples_is_a_clear_error(digits):
    with pytest.raises(ValueError, match="num_devices must be at most"):
        fl.Federation(fl.FedConfig(num_devices=5000), digits)
