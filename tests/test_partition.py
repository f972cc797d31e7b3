import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

import fedlearn_lab as fl
from fedlearn_lab import partition
from fedlearn_lab.partition import (
    dirichlet,
    iid,
    label_counts,
    partition_devices,
    shards,
    shared_split,
)


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
    min_size=st.integers(1, 3),
    seed=st.integers(0, 10_000),
)
def test_dirichlet_is_disjoint_complete_and_meets_the_minimum_or_says_so(
    n, devices, alpha, sigma, min_size, seed
):
    labels = _labels(seed, n, 10)
    try:
        parts = dirichlet(
            labels,
            devices,
            alpha,
            np.random.default_rng(seed),
            quantity_skew=sigma,
            min_size=min_size,
        )
    except ValueError as err:
        assert str(err).startswith(f"min_device_size={min_size}")
        return
    assert len(parts) == devices
    _assert_disjoint_complete_nonempty(parts, n)
    assert min(len(p) for p in parts) >= min_size


def test_dirichlet_redraws_from_the_same_generator_until_the_minimum_is_met(digits):
    # Oracle: single draws from a generator seeded alike; the first that meets the
    # minimum is the answer (flwr-datasets' DirichletPartitioner loop).
    labels = digits.y_train.numpy()
    redrawn = 0
    for seed in range(20):
        got = dirichlet(labels, 50, 0.1, np.random.default_rng(seed), min_size=2)
        rng = np.random.default_rng(seed)
        draws = [partition._dirichlet_draw(labels, 50, 0.1, rng, 0.0)]
        while min(len(d) for d in draws[-1]) < 2:
            assert len(draws) < partition.MAX_DRAWS
            draws.append(partition._dirichlet_draw(labels, 50, 0.1, rng, 0.0))
        want = draws[-1]
        assert all(
            np.array_equal(g, np.sort(w)) for g, w in zip(got, want, strict=True)
        )
        redrawn += len(draws) > 1
    assert redrawn > 10  # at skew 0.1 most first draws leave a device too small


def test_no_device_is_left_with_one_sample_at_strong_skew(digits):
    # The issue: num_devices=50, skew=0.1 left 1-sample devices in all of 50 seeds.
    for seed in range(50):
        fed = fl.Federation(fl.FedConfig(skew=0.1, seed=seed), digits)
        assert min(len(p) for p in fed.device_indices) >= 2


def test_first_draw_is_kept_when_it_meets_the_minimum(digits):
    labels = digits.y_train.numpy()
    one = partition._dirichlet_draw(labels, 50, 0.5, np.random.default_rng(0), 0.0)
    assert min(len(d) for d in one) >= 2
    got = dirichlet(labels, 50, 0.5, np.random.default_rng(0), min_size=2)
    assert all(np.array_equal(g, np.sort(w)) for g, w in zip(got, one, strict=True))


def test_an_unmeetable_minimum_is_a_clear_error(digits):
    with pytest.raises(ValueError, match=r"min_device_size=2 cannot be met: in 100 "):
        fl.Federation(fl.FedConfig(skew=0.05, num_devices=100), digits)
    with pytest.raises(ValueError, match=r"min_device_size=20 for 100 devices needs"):
        fl.Federation(
            fl.FedConfig(partition="iid", num_devices=100, min_device_size=20), digits
        )
    with pytest.raises(ValueError, match=r"min_device_size=200 is not met.*'shards'"):
        fl.Federation(
            fl.FedConfig(
                partition="shards", skew=2, num_devices=10, min_device_size=200
            ),
            digits,
        )
    data = fl.synthetic(0.5, 0.5, num_devices=6, seed=3)
    natural = fl.FedConfig(num_devices=6, partition="natural", min_device_size=10**4)
    with pytest.raises(ValueError, match=r"min_device_size=10000 is not met"):
        fl.Federation(natural, data)


QUANTITY_SKEWS = st.floats(0.0, fl.config.MAX_QUANTITY_SKEW)


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(20, 2000),
    devices=st.integers(1, 60),
    sigma=QUANTITY_SKEWS,
    min_size=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_iid_quantity_skew_over_the_whole_allowed_range(
    n, devices, sigma, min_size, seed
):
    cfg = fl.FedConfig(
        partition="iid", num_devices=devices, quantity_skew=sigma, min_device_size=1
    )
    labels = _labels(seed, n, 10)
    if devices * min_size > n:
        with pytest.raises(ValueError, match="num_devices must|min_device_size="):
            iid(
                n,
                devices,
                np.random.default_rng(seed),
                quantity_skew=sigma,
                min_size=min_size,
            )
        return
    parts = iid(
        n, devices, np.random.default_rng(seed), quantity_skew=sigma, min_size=min_size
    )
    _assert_disjoint_complete_nonempty(parts, n)
    assert min(len(p) for p in parts) >= min_size
    parts = partition_devices(labels, cfg, np.random.default_rng(seed))
    _assert_disjoint_complete_nonempty(parts, n)


@settings(max_examples=40, deadline=None)
@given(
    devices=st.integers(1, 30),
    alpha=st.sampled_from([0.1, 0.5, 1.0, 100.0]),
    sigma=st.one_of(st.floats(0.0, 1.5), QUANTITY_SKEWS),
    seed=st.integers(0, 2**32 - 1),
)
def test_dirichlet_quantity_skew_over_the_whole_allowed_range(
    digits, devices, alpha, sigma, seed
):
    labels = digits.y_train.numpy()
    cfg = fl.FedConfig(num_devices=devices, skew=alpha, quantity_skew=sigma)
    try:
        parts = partition_devices(labels, cfg, np.random.default_rng(seed))
    except ValueError as err:
        event("refused")
        assert str(err).startswith("min_device_size=2 cannot be met")
        return
    event("split")
    _assert_disjoint_complete_nonempty(parts, len(labels))
    assert min(len(p) for p in parts) >= 2


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
def test_k_shards_per_device_give_about_k_classes(devices, k, seed):
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


def test_more_shards_per_device_than_classes_is_refused(digits):
    fl.Federation(fl.FedConfig(partition="shards", skew=10, num_devices=10), digits)
    with pytest.raises(
        ValueError, match=r"skew must be at most the 10 classes .*shards per device"
    ):
        fl.Federation(fl.FedConfig(partition="shards", skew=11, num_devices=10), digits)


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


def test_shared_classes_that_cannot_give_the_fraction_are_refused(digits):
    labels = digits.y_train.numpy()
    have = int((labels == 0).sum())  # 142
    with pytest.raises(
        ValueError,
        match=rf"shared_classes=\(0,\) hold {have} .*fewer than the 718 that "
        r"shared_fraction=0.5 asks for: lower shared_fraction to at most 0.09",
    ):
        fl.Federation(fl.FedConfig(shared_classes=(0,), shared_fraction=0.5), digits)
    # Exactly all of class 0 is allowed, and gives what was asked.
    fraction = have / len(labels)
    fed = fl.Federation(
        fl.FedConfig(shared_classes=(0,), shared_fraction=fraction), digits
    )
    assert len(fed.shared_indices) == round(fraction * len(labels))


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
