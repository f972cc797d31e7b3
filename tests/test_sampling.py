import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import fedlearn_lab as fl


@given(
    num_devices=st.integers(1, 500),
    participation=st.floats(0.001, 1.0),
    seed=st.integers(0, 2**31),
)
def test_sampled_ids_unique_in_range_and_counted_by_the_rule(
    num_devices, participation, seed
):
    ids = fl.sample_devices(num_devices, participation, np.random.default_rng(seed))
    assert len(np.unique(ids)) == len(ids)
    assert ids.min() >= 0 and ids.max() < num_devices
    expected = max(1, int(np.floor(round(participation * num_devices, 9) + 0.5)))
    assert len(ids) == expected == fl.num_sampled(num_devices, participation)


def test_rounding_rule_is_half_up_with_at_least_one_device():
    assert fl.num_sampled(10, 0.15) == 2  # 1.4999999999999998 in floats
    assert fl.num_sampled(10, 0.14) == 1
    assert fl.num_sampled(100, 0.001) == 1
    assert fl.num_sampled(7, 1.0) == 7
    assert fl.num_sampled(5, 0.5) == 3  # 2.5 rounds up


def test_different_generators_sample_differently():
    draws = {
        tuple(fl.sample_devices(100, 0.1, np.random.default_rng(s))) for s in range(5)
    }
    assert len(draws) == 5
