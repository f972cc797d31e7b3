"""The methods by name (FedAvg, fixed, FedDU, Hybrid-FL, data sharing, the other
remedies and their combinations), method_of, inactive_settings, compare; momentum."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import fedlearn_lab as fl
from fedlearn_lab import reference
from fedlearn_lab.engines import ENGINES
from fedlearn_lab.momentum import momentum_step
from fedlearn_lab.seeding import torch_generator
from fedlearn_lab.weights import unstack

SMALL = fl.FedConfig(
    num_devices=20, participation=0.25, shared_fraction=0.1, local_epochs=2, rounds=3
)


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_every_method_name_gives_a_valid_config_that_it_is_named_by():
    for name, changes in fl.METHODS.items():
        assert fl.method_of(SMALL.replace(**changes)) == name


# Configs with every part of a method switched on somewhere (server_steps stays 5,
# which "fixed" keeps from the config).
_DIRTY = [
    SMALL.replace(proximal_mu=0.5, scaffold=True, server_opt="yogi"),
    SMALL.replace(server_schedule="feddu", server_momentum="feddum"),
    SMALL.replace(shared_use="hybrid", server_momentum="fedavgm", scaffold=True),
    SMALL.replace(shared_use="data_sharing", server_opt="adagrad", proximal_mu=1.0),
]


@pytest.mark.parametrize("dirty", _DIRTY, ids=lambda c: fl.method_of(c))
def test_every_method_entry_turns_any_config_into_that_method_alone(dirty):
    for name, changes in fl.METHODS.items():
        cfg = dirty.replace(**changes)
        assert fl.method_of(cfg) == name
        parts = set(name.split("+"))
        assert (cfg.proximal_mu > 0) == ("fedprox" in parts)
        assert cfg.scaffold == ("scaffold" in parts)
        adaptive = {"fedadam", "fedyogi", "fedadagrad"} & parts
        assert (cfg.server_opt != "none") == bool(adaptive)
        assert cfg.server_momentum == "none"


@pytest.mark.parametrize(
    "name", ["fedprox", "scaffold", "fedadam", "fedyogi", "fedadagrad"]
)
def test_each_remedy_entry_is_the_remedy_alone_without_the_server_adjustment(name):
    cfg = fl.FedConfig(**fl.METHODS[name])
    assert (cfg.server_steps, cfg.shared_use, cfg.server_schedule) == (
        0,
        "adjust",
        "fixed",
    )
    assert "server_lr" in fl.inactive_settings(cfg)  # no server adjustment
    combined = fl.METHODS.get(f"{name}+fixed")
    if combined is not None:  # the same remedy, with the server adjustment
        both = SMALL.replace(**combined)
        assert both.server_steps == SMALL.server_steps > 0
        assert both.replace(server_steps=0) == SMALL.replace(**fl.METHODS[name])


@pytest.mark.parametrize("dirty", _DIRTY, ids=lambda c: fl.method_of(c))
def test_the_fedavg_entry_makes_plain_fedavg_from_any_config(digits, dirty):
    plain = SMALL.replace(server_steps=0, rounds=2)
    history = fl.run(dirty.replace(rounds=2, **fl.METHODS["fedavg"]), digits).history
    assert history.records == fl.run(plain, digits).history.records


@pytest.mark.parametrize(
    ("changes", "name"),
    [
        ({}, "fixed"),
        ({"server_steps": 0}, "fedavg"),
        ({"server_steps": 0, "proximal_mu": 0.1}, "fedprox"),
        ({"proximal_mu": 0.1}, "fedprox+fixed"),
        ({"scaffold": True, "server_schedule": "feddu"}, "scaffold+feddu"),
        ({"server_steps": 0, "server_momentum": "fedavgm"}, "fedavgm"),
        ({"server_schedule": "feddu", "server_momentum": "feddum"}, "feddum+feddu"),
        (
            {"server_opt": "adagrad", "shared_use": "data_sharing"},
            "fedadagrad+data_sharing",
        ),
        (
            {
                "proximal_mu": 0.1,
                "scaffold": True,
                "server_opt": "adam",
                "shared_use": "hybrid",
            },
            "fedprox+scaffold+fedadam+hybrid",
        ),
    ],
)
def test_method_of_joins_device_side_server_optimiser_and_shared_use(changes, name):
    assert fl.method_of(SMALL.replace(**changes)) == name


def test_methods_split_the_data_identically(digits):
    splits = [fl.Federation(SMALL.replace(**c), digits) for c in fl.METHODS.values()]
    for fed in splits[1:]:
        assert torch.equal(fed.shared_indices, splits[0].shared_indices)
        assert all(
            torch.equal(a, b)
            for a, b in zip(fed.device_indices, splits[0].device_indices, strict=True)
        )


def test_hybrid_with_an_empty_shared_dataset_equals_fedavg(digits):
    no_shared = SMALL.replace(shared_fraction=0.0, server_steps=0)
    fedavg = fl.Federation(no_shared, digits)
    hybrid = fl.Federation(no_shared.replace(shared_use="hybrid"), digits)
    fedavg.run(), hybrid.run()
    assert hybrid.history.records == fedavg.history.records
    _assert_same_weights(hybrid.state.weights, fedavg.state.weights)


def test_hybrid_is_fedavg_with_the_server_as_one_more_device(digits):
    # Oracle: train the devices and the server device by hand and average by size.
    cfg = SMALL.replace(**fl.METHODS["hybrid"])
    fed = fl.Federation(cfg, digits)
    start = fed.state.weights
    record = fed.step()
    setup, shared = fed.setup, fed.shared_indices

    def train(indices, stream):
        trained, _ = reference.train_each(
            setup.model, start, digits.x_train, digits.y_train, indices,
            epochs=cfg.local_epochs, lr=cfg.local_lr, batch_size=cfg.batch_size,
            generator=torch_generator(cfg.seed, stream, 1),
        )  # fmt: skip
        return unstack(trained)

    devices = [fed.device_indices[k] for k in record.devices]
    updates = list(zip(train(devices, "local"), map(len, devices), strict=True))
    updates.append((train([shared], "hybrid")[0], len(shared)))
    expected = fl.fedavg(updates)
    for name in expected:
        torch.testing.assert_close(fed.state.weights[name], expected[name])
    assert record.server_steps == 0 and record.server_flops > 0


def test_data_sharing_gives_every_sampled_device_the_shared_dataset(digits):
    cfg = SMALL.replace(**fl.METHODS["data_sharing"])
    fed = fl.Federation(cfg, digits)
    record = fed.step()
    own = sum(len(fed.device_indices[k]) for k in record.devices)
    assert record.num_samples == own + len(record.devices) * len(fed.shared_indices)
    assert record.server_steps == 0


def test_data_sharing_with_an_empty_shared_dataset_equals_fedavg(digits):
    no_shared = SMALL.replace(shared_fraction=0.0, server_steps=0)
    fedavg = fl.run(no_shared, digits).history
    sharing = fl.run(no_shared.replace(shared_use="data_sharing"), digits).history
    assert sharing.records == fedavg.records


def test_methods_differ_from_fedavg_with_a_shared_dataset(digits):
    fedavg = fl.run(SMALL.replace(**fl.METHODS["fedavg"]), digits).history
    for name in ("fixed", "feddu", "hybrid", "data_sharing"):
        other = fl.run(SMALL.replace(**fl.METHODS[name]), digits).history
        assert other.accuracy != fedavg.accuracy, name


def test_hybrid_and_data_sharing_ignore_server_steps_but_refuse_feddu():
    fl.FedConfig(shared_use="hybrid", shared_fraction=0.0, server_steps=5)
    with pytest.raises(ValueError, match="server_schedule"):
        fl.FedConfig(shared_use="data_sharing", server_schedule="feddu")
    with pytest.raises(ValueError, match="server_steps"):
        fl.FedConfig(shared_fraction=0.0, server_steps=5)


def test_compare_and_summarize(digits):
    results = fl.compare(SMALL, digits, methods=["fedavg", "feddu"], seeds=[0, 1])
    assert list(results) == ["fedavg", "feddu"] and all(
        len(r) == 2 for r in results.values()
    )
    assert (
        results["fedavg"][1]
        == fl.run(SMALL.replace(seed=1, server_steps=0), digits).history
    )
    summary = {s.method: s for s in fl.summarize(results, target=0.0001)}
    assert summary["fedavg"].reached == 2 and summary["fedavg"].rounds_to == 1.0
    assert "fedavg" in fl.format_summary(list(summary.values()), target=0.0001)
    with pytest.raises(ValueError, match="methods must be names in"):
        fl.compare(SMALL, digits, methods=["fedsgd"])


def test_compare_runs_the_remedies_and_their_combinations_by_name(digits):
    cfg = SMALL.replace(rounds=2)
    names = ["fedprox", "scaffold+fixed", "fedadagrad"]
    seen = []
    results = fl.compare(
        cfg, digits, methods=names, seeds=[1], on_run=lambda *a: seen.append(a[:2])
    )
    assert seen == [(name, 1) for name in names]
    for name in names:
        expected = fl.run(cfg.replace(**fl.METHODS[name], seed=1), digits).history
        assert results[name][0].records == expected.records
    assert fl.method_of(cfg.replace(**fl.METHODS["scaffold+fixed"])) == "scaffold+fixed"


def test_compare_settings_applies_each_setting_after_the_method(digits):
    cfg = SMALL.replace(rounds=2)
    settings = {
        "shards 1": {"partition": "shards", "skew": 1},
        "mu 1": {"proximal_mu": 1.0},
    }
    grid = fl.compare_settings(
        cfg, digits, settings, ["fedavg", "fedprox"], seeds=[0, 2]
    )
    assert list(grid) == list(settings)
    assert all(
        list(g) == ["fedavg", "fedprox"] and len(g["fedprox"]) == 2
        for g in grid.values()
    )
    shards = cfg.replace(partition="shards", skew=1, **fl.METHODS["fedprox"], seed=2)
    assert (
        grid["shards 1"]["fedprox"][1].records == fl.run(shards, digits).history.records
    )
    strong = cfg.replace(**fl.METHODS["fedprox"]).replace(proximal_mu=1.0, seed=0)
    assert grid["mu 1"]["fedprox"][0].records == fl.run(strong, digits).history.records
    with pytest.raises(ValueError, match="skew must be a whole number"):
        fl.compare_settings(cfg, digits, {"bad": {"partition": "shards", "skew": 1.5}})


def test_summarize_gives_the_mean_of_the_last_rounds_and_its_spread(digits):
    histories = [
        fl.run(SMALL.replace(rounds=4, seed=s), digits).history for s in (0, 1)
    ]
    (summary,) = fl.summarize({"fixed": histories}, target=0.5, last=2)
    tails = [np.mean(h.accuracy[-2:]) for h in histories]
    assert summary.mean_accuracy == pytest.approx(np.mean(tails))
    assert summary.spread == pytest.approx(abs(tails[0] - tails[1]) / 2)
    traffic = [r.bytes_sent + r.bytes_received for h in histories for r in h]
    assert summary.bytes_per_round == pytest.approx(np.mean(traffic))
    with pytest.raises(ValueError, match="last must be an integer >= 1"):
        fl.summarize({"fixed": histories}, target=0.5, last=0)


def test_format_grid_puts_methods_in_rows_and_settings_in_columns():
    def summary(method, accuracy, rounds_to, reached):
        return fl.Summary(
            method, accuracy, 3, reached, rounds_to, None, None, accuracy, 0.01, 1e5
        )

    summaries = {
        "easy": [summary("fedavg", 0.9, 4.0, 3), summary("scaffold", 0.95, 2.5, 3)],
        "hard": [summary("fedavg", 0.3, None, 0)],
    }
    accuracy = fl.format_grid(summaries, "accuracy").splitlines()
    assert accuracy[0].split() == ["easy", "hard"]
    assert accuracy[1].split() == ["fedavg", "0.900±0.010", "0.300±0.010"]
    assert accuracy[2].split() == ["scaffold", "0.950±0.010"]
    rounds = fl.format_grid(summaries, "rounds").splitlines()
    assert rounds[1].split() == ["fedavg", "4.0", "(3/3)", "-", "(0/3)"]
    with pytest.raises(ValueError, match="what must be one of"):
        fl.format_grid(summaries, "bytes")


@pytest.mark.parametrize(
    ("changes", "server", "device"),
    [
        (fl.METHODS["fedavg"], 0, 0),
        (fl.METHODS["fixed"], 0, 0),
        (fl.METHODS["fedprox"], 0, 0),
        ({**fl.METHODS["fedavg"], "server_momentum": "fedavgm"}, 1, 0),  # momentum
        (fl.METHODS["fedadam"], 2, 0),  # m and v
        (fl.METHODS["scaffold"], 1, 1),  # c on the server, c_i on each device
    ],
)
def test_state_bytes_counts_the_models_each_method_keeps(
    digits, changes, server, device
):
    fed = fl.Federation(SMALL.replace(**changes), digits)
    fed.step()
    model = fed.setup.model_bytes
    assert fl.state_bytes(fed.state) == {
        "server": server * model,
        "each device": device * model,
    }


def test_adjustment_gain_is_the_mean_change_made_by_the_server(digits):
    fixed = fl.run(SMALL, digits).history
    after, before = fixed.accuracy[-2:], fixed.aggregate_accuracy[-2:]
    expected = (after[0] - before[0] + after[1] - before[1]) / 2
    assert fl.adjustment_gain([fixed], last=2) == pytest.approx(expected)
    fedavg = fl.run(SMALL.replace(server_steps=0), digits).history
    assert fl.adjustment_gain([fedavg, fedavg]) == 0.0


# --- momentum -----------------------------------------------------------------------


def _w(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.tensor([value])}


def test_momentum_none_returns_the_new_weights_unchanged():
    new = _w(2.0)
    weights, momentum = momentum_step("none", _w(1.0), new, None, beta=0.9)
    assert weights is new and momentum is None


@pytest.mark.parametrize("kind", ["feddum", "fedavgm"])
def test_momentum_first_step_is_the_plain_move(kind):
    weights, momentum = momentum_step(kind, _w(1.0), _w(3.0), None, beta=0.9)
    assert weights["w"].item() == 3.0 and momentum["w"].item() == 2.0


def test_feddum_averages_the_moves_and_fedavgm_sums_them():
    # m = 2, move 1 -> 2 (delta 1): FedDUM m' = 0.9*2 + 0.1*1 = 1.9, w = 1 + 1.9;
    # FedAvgM m' = 0.9*2 + 1 = 2.8, w = 1 + 2.8.
    weights, momentum = momentum_step("feddum", _w(1.0), _w(2.0), _w(2.0), beta=0.9)
    assert momentum["w"].item() == pytest.approx(1.9)
    assert weights["w"].item() == pytest.approx(2.9)
    weights, momentum = momentum_step("fedavgm", _w(1.0), _w(2.0), _w(2.0), beta=0.9)
    assert momentum["w"].item() == pytest.approx(2.8)
    assert weights["w"].item() == pytest.approx(3.8)


def test_momentum_rejects_an_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        momentum_step("nesterov", _w(1.0), _w(2.0), _w(0.5), beta=0.9)


@pytest.mark.parametrize("kind", ["feddum", "fedavgm"])
def test_momentum_with_beta_zero_is_no_momentum(digits, kind):
    cfg = SMALL.replace(server_schedule="feddu")
    plain = fl.Federation(cfg, digits)
    with_momentum = fl.Federation(
        cfg.replace(server_momentum=kind, momentum_beta=0.0), digits
    )
    plain.run(), with_momentum.run()
    for name, value in plain.state.weights.items():
        torch.testing.assert_close(with_momentum.state.weights[name], value)
    assert with_momentum.state.momentum is not None and plain.state.momentum is None


def test_momentum_is_kept_in_the_server_state_and_changes_the_run(digits):
    cfg = SMALL.replace(server_momentum="feddum")
    fed = fl.Federation(cfg, digits)
    fed.step()
    first = fed.state.momentum
    fed.step()
    assert fed.state.momentum is not first
    assert (
        fl.run(cfg, digits).history.accuracy != fl.run(SMALL, digits).history.accuracy
    )


def test_momentum_fields_are_validated():
    with pytest.raises(ValueError, match="server_momentum"):
        fl.FedConfig(server_momentum="adam")
    with pytest.raises(ValueError, match="momentum_beta"):
        fl.FedConfig(momentum_beta=1.0)


# --- with faults (faults.py) ----------------------------------------------------------


def test_lost_devices_receive_the_model_but_send_nothing_back(digits):
    cfg = SMALL.replace(dropout=0.6, seed=3)
    record = fl.Federation(cfg, digits).step()
    model_bytes = record.bytes_sent // len(record.devices)
    assert 0 < len(record.returned) < len(record.devices)
    assert record.bytes_received == model_bytes * len(record.returned)


def test_feddu_does_nothing_when_no_update_arrives(digits):
    cfg = SMALL.replace(server_schedule="feddu", dropout=1.0)
    record = fl.Federation(cfg, digits).step()
    assert record.kept_previous and record.returned == ()
    assert (record.server_alpha, record.server_tau, record.server_steps) == (0.0, 0, 0)
    assert record.sampled_label_divergence is None and record.device_flops == 0


def test_hybrid_server_device_alone_makes_the_aggregate_when_devices_are_lost(digits):
    fed = fl.Federation(SMALL.replace(shared_use="hybrid", dropout=1.0), digits)
    start = fed.state.weights
    record = fed.step()
    assert not record.kept_previous and record.returned == ()
    assert any(not torch.equal(start[k], fed.state.weights[k]) for k in start)


def test_data_sharing_attackers_flip_only_their_own_labels(digits, monkeypatch):
    # Every device is malicious and flips labels; the shared copy keeps its labels.
    seen = []
    train = reference.train_each

    def spy(model, weights, x, y, indices, **kwargs):
        seen.append((y, indices))
        return train(model, weights, x, y, indices, **kwargs)

    spying = dataclasses.replace(ENGINES["reference"], train_devices=spy)
    monkeypatch.setitem(ENGINES, "reference", spying)
    cfg = SMALL.replace(
        shared_use="data_sharing",
        malicious_fraction=1.0,
        attack="label_flip",
        engine="reference",
    )
    fed = fl.Federation(cfg, digits)
    fed.step()
    y, indices = seen[0]
    shared = fed.shared_indices
    assert torch.equal(y[shared], digits.y_train[shared])
    own = indices[0][: len(indices[0]) - len(shared)]
    assert not torch.equal(y[own], digits.y_train[own])


def test_a_checkpoint_resumes_feddu_with_momentum_bit_for_bit(digits, tmp_path):
    cfg = SMALL.replace(rounds=4, server_schedule="feddu", server_momentum="feddum")
    straight = fl.Federation(cfg, digits)
    straight.run()
    first = fl.Federation(cfg, digits)
    first.step(), first.step()
    resumed = fl.Federation.load(first.save(tmp_path / "run.ckpt"))
    _assert_same_weights(resumed.state.momentum, first.state.momentum)
    resumed.run()
    assert resumed.history.records == straight.history.records
    _assert_same_weights(resumed.state.weights, straight.state.weights)


def test_inactive_settings_names_what_each_method_ignores():
    feddu = fl.FedConfig(**fl.METHODS["feddu"])
    assert set(fl.inactive_settings(feddu)) >= {"server_steps", "momentum_beta"}
    assert "feddu_mode" not in fl.inactive_settings(feddu)
    hybrid = fl.inactive_settings(fl.FedConfig(**fl.METHODS["hybrid"]))
    assert {"server_steps", "server_schedule", "server_lr"} <= set(hybrid)
    fixed = fl.inactive_settings(fl.FedConfig())
    assert "server_steps" not in fixed and "feddu_mode" in fixed
    assert "server_lr" in fl.inactive_settings(fl.FedConfig(**fl.METHODS["fedavg"]))


def test_inactive_settings_names_the_server_optimisers_unread_fields():
    options = {
        "server_opt_lr",
        "server_opt_beta1",
        "server_opt_beta2",
        "server_opt_tau",
    }
    assert options <= set(fl.inactive_settings(fl.FedConfig()))
    for name in ("fedadam", "fedyogi"):
        assert not options & set(fl.inactive_settings(fl.FedConfig(**fl.METHODS[name])))
    adagrad = fl.inactive_settings(fl.FedConfig(**fl.METHODS["fedadagrad"]))
    assert options & set(adagrad) == {"server_opt_beta2"}  # v only grows: no decay
    assert "proximal_mu" not in fl.inactive_settings(fl.FedConfig())  # 0 is FedAvg


@pytest.mark.parametrize(
    ("method", "field", "value"),
    [("fedadagrad", "server_opt_beta2", 0.5), ("fedavg", "server_opt_lr", 1.0)],
)
def test_an_inactive_server_opt_field_does_not_change_the_run(
    digits, method, field, value
):
    cfg = SMALL.replace(rounds=2, **fl.METHODS[method])
    assert field in fl.inactive_settings(cfg)
    changed = fl.run(cfg.replace(**{field: value}), digits).history
    assert changed.records == fl.run(cfg, digits).history.records
