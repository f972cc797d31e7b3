"""Robust aggregators: oracles (numpy, scipy), properties, outlier resistance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats

import fedlearn_lab as fl
from fedlearn_lab import aggregation, config
from fedlearn_lab.aggregation import fedavg, krum, median, trimmed_mean

ROBUST = [median, trimmed_mean, krum]
ALL = [fedavg, *ROBUST]


@st.composite
def device_weights(draw, min_devices=1):
    n = draw(st.integers(min_devices, 9))
    values = draw(
        hnp.arrays(np.float32, (n, 3, 2), elements=st.floats(-100, 100, width=32))
    )
    sizes = draw(st.lists(st.integers(1, 50), min_size=n, max_size=n))
    return [
        ({"w": torch.from_numpy(v.copy())}, s)
        for v, s in zip(values, sizes, strict=True)
    ]


def test_aggregators_by_name_match_the_config_choices():
    assert tuple(aggregation.AGGREGATORS) == config.AGGREGATORS


@settings(max_examples=60, deadline=None)
@given(device_weights())
def test_median_equals_numpy_median(updates):
    expected = np.median(np.stack([w["w"].numpy() for w, _ in updates]), axis=0)
    np.testing.assert_allclose(median(updates)["w"].numpy(), expected, rtol=1e-6)


@settings(max_examples=60, deadline=None)
@given(device_weights(), st.sampled_from([0.0, 0.1, 0.2, 0.3, 0.49]))
def test_trimmed_mean_equals_scipy_trim_mean(updates, trim):
    expected = stats.trim_mean(
        np.stack([w["w"].numpy() for w, _ in updates]), trim, axis=0
    )
    got = trimmed_mean(updates, trim=trim)["w"].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("aggregate", ALL)
@settings(max_examples=40, deadline=None)
@given(updates=device_weights(), data=st.data())
def test_aggregators_ignore_order_and_stay_within_elementwise_bounds(
    aggregate, updates, data
):
    shuffled = data.draw(st.permutations(updates))
    result = aggregate(updates)["w"]
    stacked = torch.stack([w["w"] for w, _ in updates])
    assert torch.all(result >= stacked.min(0).values - 1e-4)
    assert torch.all(result <= stacked.max(0).values + 1e-4)
    if aggregate is not krum:  # krum's ties may pick another of equal score
        torch.testing.assert_close(
            aggregate(shuffled)["w"], result, rtol=1e-5, atol=1e-4
        )


@pytest.mark.parametrize("aggregate", ALL)
def test_identical_inputs_come_back_unchanged(aggregate):
    w = {"w": torch.tensor([[0.1, -2.0], [3.5, 7.25]])}
    result = aggregate([(w, 3), (w, 5), (w, 1)])
    assert result["w"] is not w["w"]
    if aggregate in (median, krum):  # they pick values, the means round
        assert torch.equal(result["w"], w["w"])
    torch.testing.assert_close(result["w"], w["w"])


@pytest.mark.parametrize("aggregate", ALL)
def test_empty_input_is_a_value_error(aggregate):
    with pytest.raises(ValueError, match="at least one"):
        aggregate([])


@pytest.mark.parametrize("aggregate", ROBUST)
def test_robust_aggregators_resist_a_minority_of_huge_updates(aggregate):
    # 2 of 10: trimmed_mean (trim 0.2) drops 2 per side, krum assumes up to 3.
    g = torch.Generator().manual_seed(0)
    honest = [({"w": 1.0 + 0.01 * torch.randn(4, generator=g)}, 10) for _ in range(8)]
    evil = [({"w": torch.full((4,), -1e6)}, 1000) for _ in range(2)]
    assert torch.allclose(aggregate(honest + evil)["w"], torch.ones(4), atol=0.05)
    assert fedavg(honest + evil)["w"].max() < -1e5  # FedAvg follows the attackers


def test_krum_returns_one_of_the_inputs_from_the_honest_cluster():
    ups = [
        ({"w": torch.tensor([float(x)])}, 1) for x in (0.0, 0.1, 0.2, 0.15, 50.0, -40.0)
    ]
    # n=6, f=1: scores sum the 3 nearest squared distances; 0.1 has the smallest.
    assert torch.equal(krum(ups)["w"], ups[1][0]["w"])


def test_bad_options_are_value_errors():
    ups = [({"w": torch.zeros(2)}, 1)] * 4
    with pytest.raises(ValueError, match="trim"):
        trimmed_mean(ups, trim=0.5)
    with pytest.raises(ValueError, match="num_malicious"):
        krum(ups, num_malicious=1)  # needs n >= 2f + 3 = 5


def test_config_aggregator_is_used_by_the_round():
    data = fl.load_digits()
    cfg = fl.FedConfig(num_devices=10, participation=0.5, local_epochs=1, rounds=2)
    runs = {
        name: fl.run(cfg.replace(aggregator=name), data).history
        for name in config.AGGREGATORS
    }
    finals = {name: h[-1].aggregate_accuracy for name, h in runs.items()}
    assert len({round(a, 6) for a in finals.values()}) > 1, finals
