"""FedDU's maths (divergence, alpha_t, tau_t) and its place in a round."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.spatial.distance import jensenshannon

import fedlearn_lab as fl
from fedlearn_lab.feddu import (
    MIN_ALPHA,
    alpha_t,
    label_distribution,
    label_divergence,
    tau_cap,
    tau_t,
)
from fedlearn_lab.server import feddu_schedule, fixed_schedule
from fedlearn_lab.weights import add, scale, sub

BIASED = fl.FedConfig(
    partition="shards",
    skew=2,
    shared_fraction=0.1,
    shared_classes=(0, 1, 2, 3, 4),
    server_schedule="feddu",
    rounds=4,
)


# --- divergence -------------------------------------------------------------------


def test_label_divergence_of_equal_distributions_is_zero():
    p = np.array([0.1, 0.2, 0.3, 0.4])
    assert label_divergence(p, p) == 0.0


def test_label_divergence_of_disjoint_distributions_is_one_bit():
    assert label_divergence([1.0, 0.0], [0.0, 1.0]) == pytest.approx(1.0, abs=1e-12)


def test_label_divergence_matches_hand_computed_values():
    # p = (1/2, 1/2), q = (1, 0), m = (3/4, 1/4):
    # KL(p||m) = 1/2 log2(2/3) + 1/2 log2(2) = 0.2075187...
    # KL(q||m) = log2(4/3)                     = 0.4150375...
    assert label_divergence([0.5, 0.5], [1.0, 0.0]) == pytest.approx(
        0.3112781245, abs=1e-9
    )
    # A shared dataset of 5 of 10 classes, uniform, against uniform labels:
    # KL(p||m) = log2(4/3) = 0.4150375, KL(q||m) = (log2(2/3) + 1) / 2 = 0.2075187.
    half = np.r_[np.full(5, 0.2), np.zeros(5)]
    assert label_divergence(half, np.full(10, 0.1)) == pytest.approx(
        0.3112781245, abs=1e-9
    )
    # (0.25, 0.75) vs (0.75, 0.25): m = (1/2, 1/2), both KL = 1 - H2(1/4) = 0.1887219.
    assert label_divergence([0.25, 0.75], [0.75, 0.25]) == pytest.approx(
        0.1887218755, abs=1e-9
    )


distributions = st.lists(
    st.floats(0, 1, allow_subnormal=False), min_size=2, max_size=12
).filter(lambda v: sum(v) > 1e-6)


@given(distributions, st.data())
def test_label_divergence_agrees_with_scipy_and_is_symmetric_and_bounded(p, data):
    q = data.draw(
        st.lists(
            st.floats(0, 1, allow_subnormal=False), min_size=len(p), max_size=len(p)
        ).filter(lambda v: sum(v) > 1e-6)
    )
    p, q = np.array(p) / sum(p), np.array(q) / sum(q)
    d = label_divergence(p, q)
    assert 0 <= d <= 1 + 1e-12
    assert d == pytest.approx(label_divergence(q, p), abs=1e-12)
    # scipy returns the Jensen-Shannon *distance*, the square root of the divergence.
    assert d == pytest.approx(jensenshannon(p, q, base=2) ** 2, abs=1e-9)


def test_label_divergence_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        label_divergence([0.5, 0.5], [1.0, 0.0, 0.0])


def test_label_distribution_counts_and_rounds_like_the_released_code():
    labels = np.array([0, 1, 1, 3])
    assert label_distribution(labels, 5).tolist() == [0.25, 0.5, 0.0, 0.25, 0.0]
    assert label_distribution(np.array([0, 1, 1]), 2, decimals=3).tolist() == [
        0.333,
        0.667,
    ]
    assert label_distribution(np.array([], dtype=int), 3).tolist() == [0.0, 0.0, 0.0]


# --- alpha_t and tau_t --------------------------------------------------------------


def _alpha(**changes) -> float:
    args = dict(
        shared_accuracy=0.5,
        num_shared=100,
        num_sampled_samples=300,
        shared_label_divergence=0.2,
        sampled_label_divergence=0.1,
        decay=0.99,
        round_idx=3,
    )
    args.update(changes)
    return alpha_t(args.pop("shared_accuracy"), **args)


def test_alpha_t_matches_a_hand_computed_value():
    # (1 - 0.5) * 100*0.1 / (100*0.1 + 300*0.2) * 0.99**2 = 0.5 * 10/70 * 0.9801
    assert _alpha() == pytest.approx(0.5 * 10 / 70 * 0.9801, rel=1e-12)


def test_alpha_t_falls_to_zero_as_the_sampled_data_matches_all_device_data():
    divergences = [0.4, 0.2, 0.1, 0.01, 1e-4, 0.0]
    alphas = [_alpha(sampled_label_divergence=d) for d in divergences]
    assert all(a > b for a, b in zip(alphas, alphas[1:], strict=False))
    assert alphas[-1] == 0.0


def test_alpha_t_falls_as_accuracy_on_the_shared_dataset_rises():
    alphas = [_alpha(shared_accuracy=a) for a in (0.0, 0.3, 0.6, 0.9, 1.0)]
    assert all(a > b for a, b in zip(alphas, alphas[1:], strict=False))
    assert alphas[-1] == 0.0


def test_alpha_t_decays_with_the_round_and_is_one_at_best():
    assert _alpha(round_idx=1) > _alpha(round_idx=2) > _alpha(round_idx=50)
    # An IID shared dataset, a model that knows nothing, round 1: the full update.
    assert _alpha(shared_accuracy=0.0, shared_label_divergence=0.0, round_idx=1) == 1.0


def test_alpha_t_is_zero_when_both_divergences_are_zero():
    assert _alpha(shared_label_divergence=0.0, sampled_label_divergence=0.0) == 0.0


def test_alpha_t_rejects_round_zero():
    with pytest.raises(ValueError, match="round_idx"):
        _alpha(round_idx=0)


def test_tau_t_matches_a_hand_computed_value():
    # 320 samples on 4 devices, 5 epochs of batch 10: 40 local steps per device.
    steps = tau_t(
        0.25,
        num_sampled_samples=320,
        num_sampled=4,
        local_epochs=5,
        batch_size=10,
        cap=99,
    )
    assert steps == 10
    assert tau_cap(144, local_epochs=5, server_batch_size=32) == 25  # ceil(4.5) * 5


@given(
    alpha=st.floats(0, 1),
    num_samples=st.integers(1, 10_000),
    num_sampled=st.integers(1, 50),
    epochs=st.integers(1, 10),
    batch=st.integers(1, 64),
    num_shared=st.integers(1, 2_000),
)
def test_tau_t_stays_between_zero_and_its_cap(
    alpha, num_samples, num_sampled, epochs, batch, num_shared
):
    cap = tau_cap(num_shared, local_epochs=epochs, server_batch_size=batch)
    steps = tau_t(
        alpha,
        num_sampled_samples=num_samples,
        num_sampled=num_sampled,
        local_epochs=epochs,
        batch_size=batch,
        cap=cap,
    )
    assert 0 <= steps <= cap
    assert steps <= alpha * num_samples * epochs / (num_sampled * batch)


def test_tau_t_is_capped_at_epochs_over_the_shared_dataset():
    steps = tau_t(
        1.0,
        num_sampled_samples=10_000,
        num_sampled=1,
        local_epochs=5,
        batch_size=1,
        cap=25,
    )
    assert steps == 25


# --- FedDU in a round ---------------------------------------------------------------


def test_feddu_records_alpha_tau_and_divergences(digits):
    fed = fl.Federation(BIASED, digits)
    history = fed.run()
    shared_labels = digits.y_train[fed.shared_indices].numpy()
    device_labels = digits.y_train[torch.cat(fed.device_indices)].numpy()
    expected_d0 = label_divergence(
        label_distribution(shared_labels, 10), label_distribution(device_labels, 10)
    )
    for record in history:
        assert record.shared_label_divergence == pytest.approx(expected_d0, abs=1e-12)
        assert 0 < record.sampled_label_divergence < 1
        assert 0 <= record.server_alpha <= 1
        assert record.server_steps == record.server_tau  # the "steps" reading
    assert expected_d0 > 0.25  # five of ten classes: far from the devices' labels


def test_fixed_schedule_records_no_feddu_values_but_the_divergences(digits):
    record = fl.Federation(BIASED.replace(server_schedule="fixed"), digits).step()
    assert record.server_alpha is None and record.server_tau is None
    assert record.server_steps == BIASED.server_steps
    assert record.shared_label_divergence > 0
    assert record.sampled_label_divergence is None  # FedDU's input: not computed


def test_feddu_is_deterministic(digits):
    first = fl.run(BIASED, digits).history
    again = fl.run(BIASED, digits).history
    assert first.records == again.records
    assert fl.run(BIASED.replace(seed=1), digits).history.records != first.records


def _largest(fed: fl.Federation, count: int = 5) -> np.ndarray:
    """The ``count`` devices with the most data (FedDU's tau_t > 0 for them)."""
    return np.sort(np.argsort(fed.setup.device_sizes)[-count:])


@pytest.mark.parametrize("mode", ["steps", "interpolate"])
def test_feddu_update_against_the_fixed_schedule_oracle(digits, mode):
    # FedDU's update is the fixed schedule with tau_t steps ("steps"), or alpha_t of
    # the move of a fixed schedule with the cap's steps ("interpolate").
    cfg = BIASED.replace(feddu_mode=mode, server_decay=1.0)
    fed = fl.Federation(cfg, digits)
    weights = fed.state.weights
    devices = _largest(fed)
    update = feddu_schedule(fed.setup, weights, devices, 1)
    cap = tau_cap(
        len(fed.shared_indices),
        local_epochs=cfg.local_epochs,
        server_batch_size=cfg.server_batch_size,
    )
    stats = update.stats
    assert stats.server_alpha > MIN_ALPHA and stats.server_tau > 0
    steps = stats.server_tau if mode == "steps" else cap
    oracle = fixed_schedule(
        fl.Federation(cfg.replace(server_steps=steps), digits).setup,
        weights,
        devices,
        1,
    )
    expected = (
        oracle.weights
        if mode == "steps"
        else add(weights, scale(sub(oracle.weights, weights), stats.server_alpha))
    )
    assert stats.server_steps == steps
    for name in weights:
        torch.testing.assert_close(update.weights[name], expected[name])


def test_feddu_interpolate_skips_a_tiny_alpha(digits):
    # server_decay**(t - 1) makes alpha_t tiny in a late round.
    cfg = BIASED.replace(feddu_mode="interpolate", server_decay=0.01)
    fed = fl.Federation(cfg, digits)
    update = feddu_schedule(fed.setup, fed.state.weights, _largest(fed), 4)
    assert update.stats.server_alpha <= MIN_ALPHA
    assert update.weights is fed.state.weights and update.stats.server_steps == 0


def test_feddu_needs_a_shared_dataset():
    with pytest.raises(ValueError, match="server_schedule"):
        fl.FedConfig(server_schedule="feddu", shared_fraction=0, server_steps=0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("server_schedule", "dynamic"),
        ("feddu_mode", "both"),
        ("server_decay", 0.0),
        ("server_decay", 1.5),
        ("shared_use", "proxy"),
    ],
)
def test_feddu_fields_are_validated(field, value):
    with pytest.raises(ValueError, match=field):
        fl.FedConfig(**{field: value})


@pytest.mark.slow
@pytest.mark.parametrize(
    ("num_devices", "participation"),
    [(50, 0.2), (20, 0.25)],  # the paper's shape scaled to digits; lesson 05's
)
def test_feddu_beats_fixed_steps_with_a_biased_shared_dataset(
    digits, num_devices, participation
):
    # The claim: shards of two classes, a 10% shared dataset from five
    # classes only, mean final accuracy over three seeds after 30 rounds. With 50
    # devices (~26 samples each) tau_t is 0 in most rounds, so FedDU is checked in
    # both readings.
    cfg = BIASED.replace(
        num_devices=num_devices, participation=participation, rounds=30
    )

    def mean_final(**changes) -> float:
        runs = [fl.run(cfg.replace(seed=s, **changes), digits) for s in range(3)]
        return float(np.mean([r.history.final_accuracy for r in runs]))

    fixed = mean_final(server_schedule="fixed")
    steps = mean_final(feddu_mode="steps")
    interpolate = mean_final(feddu_mode="interpolate")
    assert steps > fixed and interpolate > fixed, (steps, interpolate, fixed)
    assert not math.isnan(fixed)
