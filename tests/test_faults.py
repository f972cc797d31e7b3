"""Device faults: dropout, deadlines, update screening, and rounds that survive them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fedlearn_lab as fl
from fedlearn_lab import aggregation, faults, rounds
from fedlearn_lab.seeding import numpy_rng
from fedlearn_lab.weights import stack

FAST = fl.FedConfig(num_devices=20, participation=0.5, local_epochs=1, rounds=3)


@pytest.fixture(scope="module")
def digits():
    return fl.load_digits()


def _reference():
    return {"w": torch.zeros(4, 3), "b": torch.zeros(4)}


def _update(scale: float = 1.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {"w": scale * torch.randn(4, 3, generator=g), "b": torch.zeros(4)}


# ---- arrivals -----------------------------------------------------------------


def test_arrivals_without_faults_returns_every_sampled_device():
    sampled = np.array([1, 4, 7])
    returned, lost = faults.arrivals(sampled, [10] * 9, fl.FedConfig(num_devices=9), 1)
    assert returned.tolist() == [1, 4, 7] and lost == {}


def test_arrivals_with_dropout_one_loses_everyone():
    cfg = fl.FedConfig(num_devices=9, dropout=1.0)
    returned, lost = faults.arrivals(np.array([0, 3, 8]), [10] * 9, cfg, 1)
    assert returned.size == 0 and lost == {0: "dropout", 3: "dropout", 8: "dropout"}


def test_dropout_rate_matches_probability_over_many_rounds():
    cfg = fl.FedConfig(num_devices=100, dropout=0.3)
    sampled = np.arange(100)
    lost = sum(
        len(faults.arrivals(sampled, [5] * 100, cfg, t)[1]) for t in range(1, 51)
    )
    assert abs(lost / 5000 - 0.3) < 0.03  # 5000 Bernoulli(0.3): sd 0.0065


def test_deadline_drops_exactly_the_devices_slower_than_it():
    sizes = [5, 50, 10, 80, 20, 30]
    cfg = fl.FedConfig(num_devices=6, deadline=1.0)
    times = faults.device_times(sizes, numpy_rng(cfg.seed, "speed"))
    returned, lost = faults.arrivals(np.arange(6), sizes, cfg, 1)
    assert set(lost) == set(np.flatnonzero(times > 1.0).tolist())
    assert set(lost.values()) <= {"deadline"} and len(lost) == 3  # median time is 1
    assert returned.tolist() == np.flatnonzero(times <= 1.0).tolist()


def test_device_times_are_in_multiples_of_the_median_and_grow_with_data():
    times = faults.device_times([10, 20, 30], np.random.default_rng(0))
    assert np.median(times) == 1.0
    more = faults.device_times([20, 20, 30], np.random.default_rng(0))  # same speeds
    assert more[0] / more[2] == pytest.approx(2 * times[0] / times[2])


# ---- screening ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("broken", "reason"),
    [
        ({"w": torch.zeros(4, 3)}, "keys"),
        ({"w": torch.zeros(4, 3), "b": torch.zeros(4), "c": torch.zeros(1)}, "keys"),
        ({"w": torch.zeros(3, 4), "b": torch.zeros(4)}, "shape"),
        ({"w": torch.zeros(4, 3), "b": [0.0] * 4}, "shape"),
        ({"w": torch.zeros(4, 3, dtype=torch.float64), "b": torch.zeros(4)}, "dtype"),
        ({"w": torch.full((4, 3), float("nan")), "b": torch.zeros(4)}, "non-finite"),
        (
            {"w": torch.zeros(4, 3), "b": torch.tensor([0, 0, float("inf"), 0])},
            "non-finite",
        ),
        (None, "keys"),
    ],
)
def test_validate_update_names_what_is_wrong(broken, reason):
    assert aggregation.validate_update(broken, _reference()) == reason
    assert aggregation.validate_update(_update(), _reference()) is None


def test_norm_rule_rejects_only_updates_beyond_the_ratio_times_the_median():
    updates = [_update(1.0, seed=s) for s in range(4)]
    norms = [aggregation.delta_norm(u, _reference()) for u in updates]
    median = float(np.median(norms))
    big = _update(1.0, seed=9)
    big = {
        k: v * (5 * median / aggregation.delta_norm(big, _reference()))
        for k, v in big.items()
    }
    reasons = aggregation.screen_updates(
        stack(updates + [big]), _reference(), max_norm_ratio=4.0
    )
    assert reasons == [None] * 4 + ["norm"]
    reasons = aggregation.screen_updates(
        stack(updates + [big]), _reference(), max_norm_ratio=6.0
    )
    assert reasons == [None] * 5
    assert (
        aggregation.screen_updates(
            stack([big] + updates), _reference(), max_norm_ratio=None
        )
        == [None] * 5
    )


def test_norm_rule_ignores_non_finite_updates_when_taking_the_median():
    garbage = [{"w": torch.full((4, 3), float("nan")), "b": torch.zeros(4)}] * 5
    updates = garbage + [_update(seed=1), _update(seed=2)]
    reasons = aggregation.screen_updates(
        stack(updates), _reference(), max_norm_ratio=2.0
    )
    assert reasons == ["non-finite"] * 5 + [None, None]


# ---- rounds -------------------------------------------------------------------


def test_round_without_returns_keeps_the_previous_global_model(digits):
    fed = fl.Federation(FAST.replace(dropout=1.0, server_steps=0), digits)
    before = fed.state.weights
    record = fed.step()
    assert record.kept_previous and record.returned == () and record.num_samples == 0
    assert record.failures == tuple((k, "dropout") for k in record.devices)
    assert all(torch.equal(fed.state.weights[k], before[k]) for k in before)
    assert np.isnan(record.train_loss) and record.server_steps == 0


def test_round_without_returns_still_runs_the_server_adjustment(digits):
    fed = fl.Federation(FAST.replace(dropout=1.0, server_steps=5), digits)
    before = fed.state.weights
    record = fed.step()
    assert record.kept_previous and record.server_steps == 5
    assert record.accuracy != record.aggregate_accuracy
    assert not torch.equal(fed.state.weights["fc1.weight"], before["fc1.weight"])


def test_dropout_only_removes_devices_and_keeps_the_run_going(digits):
    fed = fl.Federation(FAST.replace(dropout=0.5, rounds=6), digits)
    history = fed.run()
    assert len(history) == 6
    for r in history:
        lost = {k for k, why in r.failures}
        assert set(r.returned) | lost == set(r.devices) and not set(r.returned) & lost
        assert r.kept_previous == (not r.returned)
    assert sum(len(r.failures) for r in history) > 0


def test_a_nan_update_is_rejected_and_the_round_goes_on(digits, monkeypatch):
    train = rounds.train_returned

    def one_device_blows_up(*args, **kwargs):
        weights, losses = train(*args, **kwargs)
        for v in weights.values():
            v[0] = float("nan")
        return weights, losses

    monkeypatch.setattr(rounds, "train_returned", one_device_blows_up)
    record = fl.Federation(FAST, digits).step()
    first = record.devices[0]
    assert record.rejected == (first,) and record.failures == ((first, "non-finite"),)
    assert record.returned == record.devices and not record.kept_previous
    assert np.isfinite(record.loss) and record.accuracy > 0.2


def test_same_seed_gives_the_same_faults_and_history(digits):
    cfg = FAST.replace(dropout=0.3, deadline=1.5, rounds=4)
    a, b = fl.run(cfg, digits).history, fl.run(cfg, digits).history
    assert a.records == b.records
    c = fl.run(cfg.replace(seed=1), digits).history
    assert [r.failures for r in a] != [r.failures for r in c]


def test_csv_lists_returned_rejected_and_failures(digits, tmp_path):
    history = fl.run(FAST.replace(dropout=0.5), digits).history
    text = history.to_csv(tmp_path / "h.csv").read_text().splitlines()
    assert text[0].endswith("returned,rejected,failures,kept_previous")
    assert any(":dropout" in line for line in text[1:])
