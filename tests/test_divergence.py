"""Divergence: a NaN/Inf global loss stops the run; the good rounds stay."""

from __future__ import annotations

import pytest
import torch

import fedlearn_lab as fl
from fedlearn_lab import reference, server

BASE = fl.FedConfig(num_devices=20, participation=0.5, local_epochs=1, rounds=6)


@pytest.fixture(scope="module")
def digits():
    return fl.load_digits()


def _nan_from_round(monkeypatch, bad_round: int):
    """Make the server adjustment return NaN weights from ``bad_round`` on."""
    adjust, calls = server.server_adjust, []

    def adjust_then_break(*args, **kwargs):
        calls.append(1)
        weights, stats = adjust(*args, **kwargs)
        if len(calls) >= bad_round:
            weights = {k: torch.full_like(v, float("nan")) for k, v in weights.items()}
        return weights, stats

    monkeypatch.setattr(server, "server_adjust", adjust_then_break)


def test_divergence_names_the_round_and_the_learning_rates(digits, monkeypatch):
    _nan_from_round(monkeypatch, 3)
    fed = fl.Federation(BASE, digits)
    with pytest.raises(
        fl.DivergedError, match=r"round 3 diverged \(loss=nan\)"
    ) as info:
        fed.run()
    message = str(info.value)
    assert "local_lr, now 0.1" in message and "server_lr, now 0.1" in message
    assert "keeps rounds 1..2" in message


def test_history_and_model_of_the_good_rounds_stay(digits, monkeypatch):
    clean = fl.Federation(BASE.replace(rounds=2), digits)
    clean.run()
    _nan_from_round(monkeypatch, 3)
    fed = fl.Federation(BASE, digits)
    with pytest.raises(fl.DivergedError) as info:
        fed.run()
    assert fed.round == 2 and fed.history.records == clean.history.records
    assert info.value.history is fed.history  # reachable from fl.run's caller too
    assert all(
        torch.equal(fed.state.weights[k], clean.state.weights[k])
        for k in clean.state.weights
    )
    assert fed.publish()(digits.x_test[:3]).isfinite().all()


def test_fl_run_error_carries_the_history(digits, monkeypatch):
    _nan_from_round(monkeypatch, 2)
    with pytest.raises(fl.DivergedError) as info:
        fl.run(BASE, digits)
    assert [r.round for r in info.value.history] == [1]


def test_a_round_whose_updates_all_blow_up_keeps_the_previous_model(digits):
    # Every device's update is NaN/Inf: all are rejected and recorded, the
    # aggregation model is the previous global model, and the run goes on.
    cfg = BASE.replace(local_lr=1e36)
    fed = fl.Federation(cfg, digits)
    start = fed.state.weights
    record = fed.step()
    assert record.kept_previous and record.returned == record.devices
    assert record.failures == tuple((k, "non-finite") for k in record.devices)
    before, _ = reference.evaluate(fed.setup.model, start, digits.x_test, digits.y_test)
    assert record.aggregate_accuracy == pytest.approx(before)
    assert len(fed.run()) == cfg.rounds


def test_undefended_scale_attack_diverges_and_blames_the_attackers(digits):
    cfg = BASE.replace(
        participation=0.2, malicious_fraction=0.1, attack="scale", attack_strength=1e30
    )
    fed = fl.Federation(cfg.replace(max_norm_ratio=None), digits)
    with pytest.raises(fl.DivergedError, match="malicious devices' scale updates"):
        fed.run()
    defended = fl.run(cfg, digits).history  # the default norm rule rejects them
    assert len(defended) == 6 and any(r.rejected for r in defended)
    assert all(why == "norm" for r in defended for _, why in r.failures)


def test_one_diverged_device_is_rejected_not_fatal(digits, monkeypatch):
    from fedlearn_lab import rounds

    train = rounds.train_returned

    def last_device_blows_up(*args, **kwargs):
        weights, losses = train(*args, **kwargs)
        for v in weights.values():
            v[-1] = float("inf")
        return weights, losses

    monkeypatch.setattr(rounds, "train_returned", last_device_blows_up)
    history = fl.Federation(BASE.replace(rounds=3), digits).run()
    assert len(history) == 3
    assert all(r.failures == ((r.devices[-1], "non-finite"),) for r in history)
