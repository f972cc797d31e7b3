"""Malicious devices: a fixed set chosen by the seed, and what each attack sends."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fedlearn_lab as fl
from fedlearn_lab import attacks
from fedlearn_lab.aggregation import delta_norm
from fedlearn_lab.seeding import numpy_rng

BASE = fl.FedConfig(num_devices=20, participation=0.5, local_epochs=1, rounds=3)


@pytest.fixture(scope="module")
def digits():
    return fl.load_digits()


def _pair():
    g = torch.Generator().manual_seed(0)
    reference = {"w": torch.randn(3, 2, generator=g), "b": torch.randn(3, generator=g)}
    update = {
        k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in reference.items()
    }
    return update, reference


@pytest.mark.parametrize(
    ("num_devices", "fraction", "count"),
    [
        (50, 0.2, 10),
        (10, 0.25, 3),
        (10, 0.15, 2),
        (7, 0.0, 0),
        (7, 1.0, 7),
        (3, 0.1, 0),
    ],
)
def test_num_malicious_rounds_half_up(num_devices, fraction, count):
    assert attacks.num_malicious(num_devices, fraction) == count


def test_malicious_set_is_fixed_by_the_seed():
    def pick(seed):
        return attacks.malicious_devices(50, 0.2, np.random.default_rng(seed))

    assert np.array_equal(pick(0), pick(0)) and not np.array_equal(pick(0), pick(1))
    ids = pick(0)
    assert len(set(ids.tolist())) == 10 and ids.min() >= 0 and ids.max() < 50


@pytest.mark.parametrize(("attack", "factor"), [("sign_flip", -3.0), ("scale", 3.0)])
def test_sign_flip_and_scale_multiply_the_delta(attack, factor):
    update, reference = _pair()
    sent = attacks.corrupt(
        update, reference, attack=attack, strength=3.0, generator=torch.Generator()
    )
    for k in reference:
        expected = reference[k] + factor * (update[k] - reference[k])
        torch.testing.assert_close(sent[k], expected)


def test_noise_sends_a_random_delta_of_strength_times_the_honest_norm():
    update, reference = _pair()
    sent = attacks.corrupt(
        update, reference, attack="noise", strength=2.5, generator=torch.Generator()
    )
    assert delta_norm(sent, reference) == pytest.approx(
        2.5 * delta_norm(update, reference)
    )
    cosine = sum(
        float(((sent[k] - reference[k]) * (update[k] - reference[k])).sum())
        for k in reference
    )
    assert abs(cosine) < 2.5 * delta_norm(update, reference) ** 2  # not just a rescale


def test_label_flip_sends_the_update_unchanged_and_flips_labels():
    update, reference = _pair()
    sent = attacks.corrupt(
        update,
        reference,
        attack="label_flip",
        strength=1.0,
        generator=torch.Generator(),
    )
    assert sent is update
    assert attacks.flip_labels(torch.tensor([0, 3, 9]), 10).tolist() == [9, 6, 0]


def test_no_attack_without_malicious_devices(digits):
    honest = fl.run(BASE, digits).history
    for attack in ("sign_flip", "label_flip", "noise"):
        cfg = BASE.replace(attack=attack, attack_strength=9.0)
        assert fl.run(cfg, digits).history.records == honest.records


@pytest.mark.parametrize("attack", ["sign_flip", "scale", "label_flip", "noise"])
def test_every_attack_changes_the_run_and_is_seeded(digits, attack):
    honest = fl.run(BASE, digits).history
    cfg = BASE.replace(malicious_fraction=0.3, attack=attack)
    attacked = fl.run(cfg, digits).history
    assert attacked.records != honest.records
    assert fl.run(cfg, digits).history.records == attacked.records


def test_scale_attack_is_caught_by_a_tight_norm_rule(digits):
    cfg = BASE.replace(malicious_fraction=0.3, attack="scale", attack_strength=50.0)
    malicious = set(
        attacks.malicious_devices(20, 0.3, numpy_rng(cfg.seed, "malicious")).tolist()
    )
    history = fl.run(cfg.replace(max_norm_ratio=5.0), digits).history
    rejected = {k for r in history for k in r.rejected}
    sampled_malicious = {k for r in history for k in r.devices} & malicious
    assert rejected == sampled_malicious and rejected
    assert all(why == "norm" for r in history for _, why in r.failures)


@pytest.mark.slow
def test_median_holds_where_fedavg_fails_under_sign_flip(digits):
    cfg = fl.FedConfig(rounds=30, server_steps=0, malicious_fraction=0.2)
    fedavg = np.mean(fl.run(cfg, digits).history.accuracy[-10:])
    median = np.mean(
        fl.run(cfg.replace(aggregator="median"), digits).history.accuracy[-10:]
    )
    honest = np.mean(
        fl.run(cfg.replace(malicious_fraction=0.0), digits).history.accuracy[-10:]
    )
    assert fedavg < 0.5 < 0.7 < median < honest  # measured: 0.33, 0.77, 0.91
