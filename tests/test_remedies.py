"""The other non-IID remedies (FedProx, SCAFFOLD, FedAdam/FedYogi/FedAdagrad) against
oracles: hand-written torch, short independent implementations of the papers'
algorithms, and Flower's own strategies."""

from __future__ import annotations

import copy
import dataclasses
from unittest import mock

import numpy as np
import pytest
import torch
from torch.nn.functional import cross_entropy

import fedlearn_lab as fl
from fedlearn_lab import reference, scaffold, vectorized
from fedlearn_lab.aggregation import Stacked
from fedlearn_lab.engines import ENGINES
from fedlearn_lab.models import make_model
from fedlearn_lab.server_opt import server_opt_step
from fedlearn_lab.weights import stack

flower = pytest.mark.flower


def _stacked(weights):
    """Stacked weights, as given or from a list."""
    return weights if isinstance(weights, dict) else stack(weights)


def _model(name, data, seed=0):
    return make_model(
        name, data.input_shape, 10, torch.Generator().manual_seed(seed), hidden=16
    )


def _random_like(weights, seed, size=1.0):
    g = torch.Generator().manual_seed(seed)
    return {k: size * torch.randn(v.shape, generator=g) for k, v in weights.items()}


# --- FedConfig: the new fields -------------------------------------------------------


def test_remedies_are_off_by_default():
    cfg = fl.FedConfig()
    assert (cfg.proximal_mu, cfg.scaffold, cfg.server_opt) == (0.0, False, "none")
    assert cfg.server_opt_lr > 0 and cfg.server_opt_tau > 0
    assert 0 <= cfg.server_opt_beta1 < 1 and 0 <= cfg.server_opt_beta2 < 1


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"proximal_mu": -0.1}, r"proximal_mu must be a finite number >= 0"),
        ({"proximal_mu": float("inf")}, r"proximal_mu must be a finite number >= 0"),
        ({"proximal_mu": "0.1"}, r"proximal_mu must be a finite number >= 0"),
        ({"scaffold": 1}, r"scaffold must be True or False"),
        ({"scaffold": "yes"}, r"scaffold must be True or False"),
        ({"server_opt": "sgd"}, r"server_opt must be one of 'none', 'adam', 'yogi'"),
        ({"server_opt_lr": 0}, r"server_opt_lr must be a number > 0"),
        ({"server_opt_beta1": 1.0}, r"server_opt_beta1 must be a number in \[0, 1\)"),
        ({"server_opt_beta2": -0.1}, r"server_opt_beta2 must be a number in \[0, 1\)"),
        ({"server_opt_tau": 0.0}, r"server_opt_tau must be a number > 0"),
        (
            {"scaffold": True, "aggregator": "median"},
            r"scaffold must be False with aggregator='median'",
        ),
        (
            {"server_opt": "adam", "server_momentum": "fedavgm"},
            r"server_opt must be 'none' with server_momentum='fedavgm' \(two server",
        ),
    ],
)
def test_remedy_settings_out_of_range_raise_naming_the_field(changes, message):
    with pytest.raises(ValueError, match=message):
        fl.FedConfig(**changes)


def test_remedies_compose_with_the_server_adjustment_and_with_each_other():
    cfg = fl.FedConfig(**fl.METHODS["feddu"]).replace(
        proximal_mu=0.01, scaffold=True, server_opt="yogi"
    )
    assert fl.method_of(cfg) == "fedprox+scaffold+fedyogi+feddu"
    assert fl.FedConfig.from_dict(cfg.to_dict()) == cfg
    # server_opt_* may be set while server_opt is "none": they are inactive then.
    assert fl.FedConfig(server_opt_lr=1.0, server_opt_tau=0.5).server_opt == "none"


# --- FedProx: the proximal term -------------------------------------------------------


def _hand_written_sgd(net, x, y, *, steps, lr, mu, correction=None):
    """Full-batch torch.optim.SGD on loss + mu/2 ||w - w_0||^2 + <correction, w>."""
    net = copy.deepcopy(net).train()
    start = {k: p.detach().clone() for k, p in net.named_parameters()}
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = cross_entropy(net(x), y)
        for k, p in net.named_parameters():
            loss = loss + mu / 2 * ((p - start[k]) ** 2).sum()
            if correction is not None:
                loss = loss + (correction[k] * p).sum()
        loss.backward()
        opt.step()
    return {k: p.detach() for k, p in net.named_parameters()}


@pytest.mark.parametrize("model", ["logreg", "mlp"])
def test_fedprox_on_one_device_full_batch_equals_hand_written_torch(digits, model):
    net = _model(model, digits)
    x, y = digits.x_train[:200], digits.y_train[:200]
    steps, lr, mu = 5, 0.5, 0.7
    expected = _hand_written_sgd(net, x, y, steps=steps, lr=lr, mu=mu)
    batches = [torch.arange(200)] * steps
    got, _ = reference.sgd(net, dict(net.state_dict()), x, y, batches, lr=lr, mu=mu)
    plain, _ = reference.sgd(net, dict(net.state_dict()), x, y, batches, lr=lr)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=1e-6)
    assert any((got[k] - plain[k]).abs().max() > 1e-3 for k in got)  # mu matters


def test_correction_on_one_device_equals_hand_written_torch(digits):
    # SCAFFOLD's correction is the gradient of the linear term <c - c_i, w>.
    net = _model("mlp", digits)
    weights = dict(net.state_dict())
    correction = _random_like(weights, seed=3, size=0.05)
    x, y = digits.x_train[:100], digits.y_train[:100]
    expected = _hand_written_sgd(
        net, x, y, steps=4, lr=0.3, mu=0.2, correction=correction
    )
    batches = [torch.arange(100)] * 4
    got, _ = reference.sgd(
        net, weights, x, y, batches, lr=0.3, mu=0.2, correction=correction
    )
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=1e-6)


def _train(train, digits, model, *, generator_seed=1, **remedies):
    net = _model(model, digits)
    sizes = [30, 7, 19, 1]
    order = torch.randperm(1000, generator=torch.Generator().manual_seed(0))
    devices = list(torch.split(order[: sum(sizes)], sizes))
    return train(
        net, dict(net.state_dict()), digits.x_train, digits.y_train, devices,
        epochs=2, lr=0.2, batch_size=8,
        generator=torch.Generator().manual_seed(generator_seed), **remedies,
    )  # fmt: skip


@pytest.mark.parametrize("train", [reference.train_each, vectorized.train_devices])
def test_fedprox_with_mu_zero_equals_fedavg_bit_for_bit(digits, train):
    plain_w, plain_loss = _train(train, digits, "mlp")
    zero_w, zero_loss = _train(train, digits, "mlp", mu=0.0)
    prox_w, _ = _train(train, digits, "mlp", mu=0.5)
    plain_w, zero_w, prox_w = (_stacked(w) for w in (plain_w, zero_w, prox_w))
    assert all(torch.equal(zero_w[k], v) for k, v in plain_w.items())
    assert torch.equal(zero_loss, plain_loss)
    assert not all(torch.equal(prox_w[k], v) for k, v in plain_w.items())


def test_fedprox_pulls_devices_towards_the_global_model(digits):
    net = _model("mlp", digits)
    start = dict(net.state_dict())

    def distance(mu):
        trained, _ = _train(vectorized.train_devices, digits, "mlp", mu=mu)
        return sum(((v - start[k]) ** 2).sum() for k, v in trained.items()).item()

    assert distance(1.0) < distance(0.1) < distance(0.0)


def test_bad_mu_or_corrections_raise_before_training(digits):
    net = _model("logreg", digits)
    weights = dict(net.state_dict())
    args = (net, weights, digits.x_train, digits.y_train, [torch.arange(5)])
    with pytest.raises(ValueError, match="mu must be a finite number >= 0"):
        reference.sgd(*args, lr=0.1, mu=-1.0)
    with pytest.raises(ValueError, match="mu must be a finite number >= 0"):
        vectorized.sgd(*args, lr=0.1, mu=float("nan"))
    wrong = {"fc.weight": torch.zeros(10, 64)}
    with pytest.raises(ValueError, match="correction must have the keys and shapes"):
        reference.sgd(*args, lr=0.1, correction=wrong)
    kwargs = dict(epochs=1, lr=0.1, batch_size=4, generator=torch.Generator())
    unstacked = {k: torch.zeros_like(v) for k, v in weights.items()}
    # The reference engine checks each device's row as it trains it.
    with pytest.raises(ValueError, match=r"correction must have the keys and shapes"):
        reference.train_each(
            *args[:4], [torch.arange(5)], corrections=unstacked, **kwargs
        )
    with pytest.raises(ValueError, match=r"corrections must have .* \(1, \.\.\.\)"):
        vectorized.train_devices(
            *args[:4], [torch.arange(5)], corrections=unstacked, **kwargs
        )


# --- SCAFFOLD ------------------------------------------------------------------------


def _scaffold_by_hand(net, data, devices, sampled_per_round, *, steps, lr):
    """Karimireddy et al.'s Algorithm 1, option II, as plain torch loops: full-batch
    local steps, global step 1. Returns the global weights after each round."""
    params = [p.detach().clone() for p in net.parameters()]
    x = [p.clone() for p in params]
    c = [torch.zeros_like(p) for p in params]
    c_dev = [[torch.zeros_like(p) for p in params] for _ in devices]
    net = copy.deepcopy(net)
    history = []
    for sampled in sampled_per_round:
        delta_y, delta_c = [], []
        for i in sampled:
            xi, yi = data.x_train[devices[i]], data.y_train[devices[i]]
            y = [p.clone() for p in x]
            for _ in range(steps):
                for p, value in zip(net.parameters(), y, strict=True):
                    p.data = value.clone()
                net.zero_grad()
                cross_entropy(net(xi), yi).backward()
                y = [
                    v - lr * (p.grad - ci + cc)
                    for v, p, ci, cc in zip(
                        y, net.parameters(), c_dev[i], c, strict=True
                    )
                ]
            c_plus = [
                ci - cc + (xx - yy) / (steps * lr)
                for ci, cc, xx, yy in zip(c_dev[i], c, x, y, strict=True)
            ]
            delta_y.append([yy - xx for yy, xx in zip(y, x, strict=True)])
            delta_c.append([a - b for a, b in zip(c_plus, c_dev[i], strict=True)])
            c_dev[i] = c_plus
        share = len(sampled) / len(devices)
        x = [xx + sum(d[j] for d in delta_y) / len(sampled) for j, xx in enumerate(x)]
        c = [
            cc + share * sum(d[j] for d in delta_c) / len(sampled)
            for j, cc in enumerate(c)
        ]
        history.append(x)
    return history


def _scaffold_with_the_package(train, net, data, devices, sampled_per_round, **kw):
    """The same rounds from scaffold.py and an engine's train_devices."""
    x = dict(net.state_dict())
    c, controls = scaffold.initial_controls(x, len(devices))
    history = []
    for t, sampled in enumerate(sampled_per_round):
        trained, _ = train(
            net, x, data.x_train, data.y_train, [devices[i] for i in sampled],
            epochs=kw["steps"], lr=kw["lr"], batch_size=kw["batch_size"],
            generator=torch.Generator().manual_seed(t),
            corrections=scaffold.corrections(c, controls, sampled),
        )  # fmt: skip
        trained = _stacked(trained)
        old = {k: v[sampled] for k, v in controls.items()}
        new = scaffold.device_control(
            old, c, x, trained, num_steps=[kw["steps"]] * len(sampled), lr=kw["lr"]
        )
        delta_c = {k: new[k] - old[k] for k in new}
        c = scaffold.server_control(c, delta_c, len(devices))
        controls = scaffold.store_controls(controls, sampled, new)
        x = fl.fedavg(Stacked(_stacked(trained), [1] * len(sampled)))  # global step 1
        history.append(x)
    return history, c, controls


@pytest.mark.parametrize("train", [reference.train_each, vectorized.train_devices])
@pytest.mark.parametrize(
    ("num_devices", "sampled_per_round"),
    [(2, [[0, 1], [0, 1], [1, 0]]), (3, [[0, 1], [2, 1], [0, 2]])],
)
def test_scaffold_equals_an_independent_implementation_of_option_two(
    digits, train, num_devices, sampled_per_round
):
    net = _model("mlp", digits)
    order = torch.randperm(1000, generator=torch.Generator().manual_seed(5))
    # Label-skewed devices of different sizes; one batch per step (full batch).
    by_label = order[digits.y_train[order].argsort(stable=True)]
    devices = [by_label[:40], by_label[300:370], by_label[700:730]][:num_devices]
    kw = dict(steps=3, lr=0.3, batch_size=100)
    expected = _scaffold_by_hand(
        net, digits, devices, sampled_per_round, steps=3, lr=0.3
    )
    got, c, controls = _scaffold_with_the_package(
        train, net, digits, devices, sampled_per_round, **kw
    )
    names = list(got[0])
    for want, have in zip(expected, got, strict=True):
        for name, value in zip(names, want, strict=True):
            torch.testing.assert_close(have[name], value, rtol=0, atol=1e-5)
    # The server's control stays the mean of every device's control.
    for name, value in c.items():
        torch.testing.assert_close(value, controls[name].mean(0), rtol=0, atol=1e-6)
    # And the corrections did change the trajectory: FedAvg ends elsewhere.
    fedavg = _fedavg_rounds(net, digits, devices, sampled_per_round, kw)[-1]
    assert any((got[-1][k] - v).abs().max() > 1e-3 for k, v in fedavg.items())


def _fedavg_rounds(net, data, devices, sampled_per_round, kw):
    """The same rounds without corrections: the plain mean of the devices' weights."""
    x = dict(net.state_dict())
    history = []
    for t, sampled in enumerate(sampled_per_round):
        trained, _ = reference.train_each(
            net, x, data.x_train, data.y_train, [devices[i] for i in sampled],
            epochs=kw["steps"], lr=kw["lr"], batch_size=kw["batch_size"],
            generator=torch.Generator().manual_seed(t),
        )  # fmt: skip
        x = fl.fedavg(Stacked(_stacked(trained), [1] * len(sampled)))
        history.append(x)
    return history


def test_scaffold_on_one_device_always_sampled_equals_fedavg(digits):
    # c_1+ - c_1 is added to c = c_1, so c = c_1 after every round and the correction
    # c - c_1 is zero up to rounding: SCAFFOLD takes FedAvg's steps.
    net = _model("mlp", digits)
    device = [torch.arange(50)]
    rounds = [[0]] * 4
    kw = dict(steps=2, lr=0.2, batch_size=8)  # minibatches: 7 steps a round
    steps = kw["steps"] * -(-50 // kw["batch_size"])
    x = dict(net.state_dict())
    c, controls = scaffold.initial_controls(x, 1)
    fedavg = _fedavg_rounds(net, digits, device, rounds, kw)
    for t, expected in enumerate(fedavg):
        correction = scaffold.corrections(c, controls, [0])
        assert max(v.abs().max().item() for v in correction.values()) < 1e-6
        trained, _ = reference.train_each(
            net, x, digits.x_train, digits.y_train, device,
            epochs=kw["steps"], lr=kw["lr"], batch_size=kw["batch_size"],
            generator=torch.Generator().manual_seed(t), corrections=correction,
        )  # fmt: skip
        y = {k: v[0] for k, v in trained.items()}
        old = {k: v[0] for k, v in controls.items()}
        new = scaffold.device_control(old, c, x, y, num_steps=steps, lr=0.2)
        c = scaffold.server_control(c, stack([{k: new[k] - old[k] for k in new}]), 1)
        controls = scaffold.store_controls(controls, [0], stack([new]))
        x = y
        for name, value in expected.items():
            torch.testing.assert_close(x[name], value, rtol=0, atol=1e-6)
        for name, value in c.items():
            torch.testing.assert_close(controls[name][0], value, rtol=0, atol=1e-6)
    assert any(v.abs().max() > 0.01 for v in c.values())  # c itself is not zero


def test_device_control_on_stacked_devices_equals_one_at_a_time():
    x = _random_like({"w": torch.zeros(3, 4), "b": torch.zeros(3)}, seed=0)
    c = _random_like(x, seed=1)
    c_i = {k: torch.randn(2, *v.shape) for k, v in x.items()}
    y_i = {k: torch.randn(2, *v.shape) for k, v in x.items()}
    both = scaffold.device_control(c_i, c, x, y_i, num_steps=[3, 7], lr=0.1)
    for row, steps in enumerate([3, 7]):
        one = scaffold.device_control(
            {k: v[row] for k, v in c_i.items()}, c, x,
            {k: v[row] for k, v in y_i.items()}, num_steps=steps, lr=0.1,
        )  # fmt: skip
        for k, v in one.items():
            torch.testing.assert_close(both[k][row], v, rtol=1e-6, atol=1e-6)
            # option II, written out
            expected = c_i[k][row] - c[k] + (x[k] - y_i[k][row]) / (steps * 0.1)
            torch.testing.assert_close(v, expected, rtol=1e-6, atol=1e-6)


def test_controls_of_devices_not_sampled_are_kept():
    controls = {"w": torch.arange(12.0).view(4, 3)}
    before = controls["w"].clone()
    new = scaffold.store_controls(controls, [2, 0], {"w": -torch.ones(2, 3)})
    assert torch.equal(new["w"][[1, 3]], before[[1, 3]])
    assert torch.equal(new["w"][[0, 2]], -torch.ones(2, 3))
    assert torch.equal(controls["w"], before)  # a copy
    none = {"w": torch.zeros(0, 3)}
    assert torch.equal(scaffold.store_controls(controls, [], none)["w"], before)


def test_server_control_scales_the_mean_by_the_sampled_share():
    c = {"w": torch.ones(2)}
    delta = {"w": torch.tensor([[2.0, 0.0], [4.0, 2.0]])}  # two devices, stacked
    out = scaffold.server_control(c, delta, num_devices=10)
    torch.testing.assert_close(out["w"], torch.tensor([1.6, 1.2]))  # 1 + 2/10 * mean
    none = {"w": torch.zeros(0, 2)}
    assert torch.equal(scaffold.server_control(c, none, 10)["w"], c["w"])


def test_update_controls_equals_device_then_server_control_then_store():
    # The round's one-pass update against the three steps written out in scaffold.py:
    # 3 of 5 devices return, after different numbers of steps.
    x = _random_like({"w": torch.zeros(3, 4), "b": torch.zeros(3)}, seed=0)
    c = _random_like(x, seed=1, size=0.1)
    c_all = {k: torch.randn(5, *v.shape) * 0.1 for k, v in x.items()}
    ids, steps = [4, 0, 2], [3, 7, 5]
    y_i = {k: v + 0.05 * torch.randn(3, *v.shape) for k, v in x.items()}
    old = {k: v[ids] for k, v in c_all.items()}
    new = scaffold.device_control(old, c, x, y_i, num_steps=steps, lr=0.1)
    delta = {k: new[k] - old[k] for k in new}
    expected = (
        scaffold.server_control(c, delta, num_devices=5),
        scaffold.store_controls(c_all, ids, new),
    )
    got = scaffold.update_controls((c, c_all), x, y_i, ids, num_steps=steps, lr=0.1)
    for want, have in zip(expected, got, strict=True):
        for k, v in want.items():
            torch.testing.assert_close(have[k], v, rtol=0, atol=1e-6)
    assert torch.equal(got[1]["w"][[1, 3]], c_all["w"][[1, 3]])  # not sampled: kept
    with pytest.raises(ValueError, match=r"num_steps must hold one count per device"):
        scaffold.update_controls((c, c_all), x, y_i, ids, num_steps=[3, 7], lr=0.1)
    with pytest.raises(ValueError, match="lr must be a number > 0"):
        scaffold.update_controls((c, c_all), x, y_i, ids, num_steps=steps, lr=0.0)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: scaffold.initial_controls({}, 0), "num_devices must be an integer"),
        (
            lambda: scaffold.server_control(
                {}, {"w": torch.zeros(2, 3)}, num_devices=1
            ),
            r"num_devices must be an integer >= 2",
        ),
        (
            lambda: scaffold.device_control({}, {}, {}, {}, num_steps=0, lr=0.1),
            "num_steps must be integers >= 1",
        ),
        (
            lambda: scaffold.device_control({}, {}, {}, {}, num_steps=[2, 0], lr=0.1),
            "num_steps must be integers >= 1",
        ),
        (
            lambda: scaffold.device_control({}, {}, {}, {}, num_steps=1, lr=0),
            "lr must be a number > 0",
        ),
    ],
)
def test_scaffold_bad_arguments_raise_naming_them(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --- Server optimisers ---------------------------------------------------------------

_HYPER = dict(lr=0.05, beta1=0.9, beta2=0.99, tau=1e-3)


def _server_rounds(num_rounds=4, seed=0):
    """Global weights and a fixed average change per round, as float32 arrays; some
    entries never change (delta 0) and one is constant across rounds."""
    rng = np.random.default_rng(seed)
    x0 = {"w": rng.normal(size=(4, 5)), "b": rng.normal(size=3)}
    deltas = []
    for _ in range(num_rounds):
        d = {k: rng.normal(scale=0.1, size=v.shape) for k, v in x0.items()}
        d["w"][0] = 0.0
        d["b"][1] = 0.02
        deltas.append(d)
    f32 = lambda a: {k: v.astype(np.float32) for k, v in a.items()}  # noqa: E731
    return f32(x0), [f32(d) for d in deltas]


def _package_rounds(kind, x0, deltas, *, state=None, **options):
    x = {k: torch.from_numpy(v) for k, v in x0.items()}
    out = []
    for t, d in enumerate(deltas, start=1):
        aggregated = {k: v + torch.from_numpy(d[k]) for k, v in x.items()}
        x, state = server_opt_step(kind, x, aggregated, state, round_idx=t, **options)
        out.append({k: v.numpy() for k, v in x.items()})
    return out


def _paper_rounds(kind, x0, deltas, *, lr, beta1, beta2, tau):
    """Reddi et al., Algorithm 2 (lines 10-14), in numpy: m_{-1} = 0, v_{-1} = tau^2,
    no bias correction."""
    x = {k: v.astype(np.float64) for k, v in x0.items()}
    m = {k: np.zeros_like(v) for k, v in x.items()}
    v = {k: np.full_like(val, tau**2) for k, val in x.items()}
    out = []
    for d in deltas:
        for k in x:
            m[k] = beta1 * m[k] + (1 - beta1) * d[k]
            if kind == "adagrad":
                v[k] = v[k] + d[k] ** 2
            elif kind == "adam":
                v[k] = beta2 * v[k] + (1 - beta2) * d[k] ** 2
            else:
                v[k] = v[k] - (1 - beta2) * d[k] ** 2 * np.sign(v[k] - d[k] ** 2)
            x[k] = x[k] + lr * m[k] / (np.sqrt(v[k]) + tau)
        out.append({k: val.copy() for k, val in x.items()})
    return out


@pytest.mark.parametrize("kind", ["adam", "yogi", "adagrad"])
def test_server_opt_equals_algorithm_two_of_the_paper(kind):
    x0, deltas = _server_rounds()
    expected = _paper_rounds(kind, x0, deltas, **_HYPER)
    tau2 = {k: torch.full(v.shape, _HYPER["tau"] ** 2) for k, v in x0.items()}
    start = ({k: torch.zeros(v.shape) for k, v in x0.items()}, tau2)
    got = _package_rounds(
        kind, x0, deltas, state=start, bias_correction=False, **_HYPER
    )
    for want, have in zip(expected, got, strict=True):
        for k in want:
            np.testing.assert_allclose(have[k], want[k], rtol=0, atol=1e-6)
    moved = np.abs(got[-1]["w"] - x0["w"]).max()
    assert moved > 0.01  # the steps are far larger than the tolerance


def test_fedadam_bias_correction_is_flowers_and_fades_away():
    x0, deltas = _server_rounds(num_rounds=1)
    old = {k: torch.from_numpy(v) for k, v in x0.items()}
    new = {k: v + torch.from_numpy(deltas[0][k]) for k, v in old.items()}
    beta1, beta2 = _HYPER["beta1"], _HYPER["beta2"]
    factor = np.sqrt(1 - beta2**2) / (1 - beta1**2)  # round 1: exponent 1 + 1
    plain, _ = server_opt_step(
        "adam", old, new, None, round_idx=1, bias_correction=False, **_HYPER
    )
    corrected, _ = server_opt_step("adam", old, new, None, round_idx=1, **_HYPER)
    for k in old:
        torch.testing.assert_close(
            corrected[k] - old[k], factor * (plain[k] - old[k]), rtol=1e-5, atol=1e-7
        )
    late, _ = server_opt_step("adam", old, new, None, round_idx=10_000, **_HYPER)
    for k in old:
        torch.testing.assert_close(late[k], plain[k], rtol=0, atol=1e-7)


def _flower_rounds(kind, x0, deltas, *, lr, beta1, beta2, tau):
    """Flower's own strategy code: its aggregate_train on each round's aggregated
    arrays (FedAvg's averaging of the replies is replaced by those arrays)."""
    from flwr.app import Array, ArrayRecord
    from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvg, FedYogi

    if kind == "adagrad":
        strategy = FedAdagrad(eta=lr, tau=tau)  # Flower fixes beta_1 = 0 here
    else:
        strategy = {"adam": FedAdam, "yogi": FedYogi}[kind](
            eta=lr, beta_1=beta1, beta_2=beta2, tau=tau
        )
    x, out = dict(x0), []
    for server_round, d in enumerate(deltas, start=1):
        strategy.current_arrays = x  # what configure_train stores
        record = ArrayRecord({k: Array(np.asarray(v + d[k])) for k, v in x.items()})
        with mock.patch.object(FedAvg, "aggregate_train", return_value=(record, None)):
            new, _ = strategy.aggregate_train(server_round, [])
        x = {k: a.numpy() for k, a in new.items()}
        out.append(x)
    return out


@flower
@pytest.mark.parametrize("kind", ["adam", "yogi", "adagrad"])
def test_server_opt_equals_flowers_strategies(kind):
    x0, deltas = _server_rounds()
    hyper = {**_HYPER, "beta1": 0.0} if kind == "adagrad" else _HYPER
    expected = _flower_rounds(kind, x0, deltas, **hyper)
    got = _package_rounds(kind, x0, deltas, **hyper)
    for want, have in zip(expected, got, strict=True):
        for k in want:
            np.testing.assert_allclose(have[k], want[k], rtol=0, atol=1e-6)
    # Flower's start (zeros) is not the paper's (tau^2): the readings differ.
    paper = _paper_rounds(kind, x0, deltas, **hyper)
    assert max(np.abs(paper[0][k] - expected[0][k]).max() for k in x0) > 1e-4


def test_server_opt_none_returns_the_aggregated_model_and_its_state():
    old, new = {"w": torch.zeros(2)}, {"w": torch.ones(2)}
    state = ({"w": torch.ones(2)}, {"w": torch.ones(2)})
    out, kept = server_opt_step("none", old, new, state, round_idx=3, **_HYPER)
    assert out is new and kept is state


def test_server_opt_changes_no_input():
    old, new = {"w": torch.zeros(3)}, {"w": torch.ones(3)}
    state = ({"w": torch.ones(3)}, {"w": torch.ones(3)})
    server_opt_step("yogi", old, new, state, round_idx=1, **_HYPER)
    assert torch.equal(old["w"], torch.zeros(3)) and torch.equal(
        new["w"], torch.ones(3)
    )
    assert all(torch.equal(s["w"], torch.ones(3)) for s in state)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"kind": "sgd"}, "kind must be one of"),
        ({"round_idx": 0}, r"round_idx must be an integer >= 1"),
        ({"tau": 0.0}, r"tau must be a number > 0"),
        ({"lr": -1.0}, r"lr must be a number > 0"),
        ({"beta2": 1.0}, r"beta2 must be a number in \[0, 1\)"),
    ],
)
def test_server_opt_bad_arguments_raise_naming_them(changes, message):
    args = {"kind": "adam", "round_idx": 1, **_HYPER, **changes}
    kind = args.pop("kind")
    with pytest.raises(ValueError, match=message):
        server_opt_step(kind, {"w": torch.zeros(1)}, {"w": torch.ones(1)}, None, **args)


# --- Through the round (fl.run / Federation.step): round-level oracles ---------------


def _spy_engine(monkeypatch, engine, calls):
    """Record every train_devices call of ``engine`` (its keyword arguments, the
    devices' sizes and the weights it returns) in ``calls``."""
    train = ENGINES[engine].train_devices

    def spy(model, weights, x, y, indices, **kwargs):
        trained, losses = train(model, weights, x, y, indices, **kwargs)
        sizes = [len(idx) for idx in indices]
        calls.append({"kwargs": kwargs, "sizes": sizes, "trained": _stacked(trained)})
        return trained, losses

    spying = dataclasses.replace(ENGINES[engine], train_devices=spy)
    monkeypatch.setitem(ENGINES, engine, spying)


def _without_mu(monkeypatch, engine):
    """The engine as it was before FedProx: the ``mu`` keyword never reaches it."""
    train = ENGINES[engine].train_devices

    def plain(*args, mu=None, **kwargs):
        return train(*args, **kwargs)

    monkeypatch.setitem(
        ENGINES, engine, dataclasses.replace(ENGINES[engine], train_devices=plain)
    )


ROUNDS = fl.FedConfig(
    num_devices=16, participation=0.25, local_epochs=2, batch_size=7, rounds=3,
    hidden=16,
)  # fmt: skip


@pytest.mark.parametrize("engine", ["reference", "vectorized"])
def test_fedprox_with_mu_zero_through_fl_run_equals_fedavg_bit_for_bit(
    digits, monkeypatch, engine
):
    cfg = ROUNDS.replace(engine=engine, **fl.METHODS["fedprox"])
    calls = []
    _spy_engine(monkeypatch, engine, calls)
    zero = fl.Federation(cfg.replace(proximal_mu=0.0), digits)
    zero.run()
    assert calls and all(c["kwargs"]["mu"] == 0.0 for c in calls)  # mu was sent
    prox = fl.run(cfg, digits).history
    assert all(c["kwargs"]["mu"] == cfg.proximal_mu > 0 for c in calls[-3:])
    monkeypatch.undo()
    _without_mu(monkeypatch, engine)
    fedavg = fl.Federation(cfg.replace(proximal_mu=0.0), digits)
    fedavg.run()
    assert zero.history.records == fedavg.history.records
    for name, value in fedavg.state.weights.items():
        assert torch.equal(zero.state.weights[name], value), name
    assert prox.loss != fedavg.history.loss  # mu > 0 does change the run


def _equal_pair():
    """Two devices of equal size (704 samples each, one class range each), both
    sampled every round, one full batch per local step."""
    return fl.FedConfig(
        num_devices=2, participation=1.0, partition="shards", skew=1,
        shared_fraction=0.02, local_epochs=3, batch_size=1000, local_lr=0.3,
        rounds=3, hidden=16, engine="reference", **fl.METHODS["scaffold"],
    )  # fmt: skip


def test_scaffold_through_fl_run_equals_an_independent_option_two(digits):
    fed = fl.Federation(_equal_pair(), digits)
    assert fed.setup.device_sizes == [704, 704]  # FedAvg's weights are 1/2 and 1/2
    net = copy.deepcopy(fed.setup.model)
    net.load_state_dict(fed.state.weights)
    cfg = fed.cfg
    expected = _scaffold_by_hand(
        net, digits, fed.device_indices, [[0, 1]] * cfg.rounds,
        steps=cfg.local_epochs, lr=cfg.local_lr,
    )  # fmt: skip
    names = [name for name, _ in net.named_parameters()]
    for want in expected:
        fed.step()
        for name, value in zip(names, want, strict=True):
            torch.testing.assert_close(
                fed.state.weights[name], value, rtol=0, atol=1e-5
            )
    plain = fl.Federation(cfg.replace(scaffold=False), digits)
    plain.run()
    last = dict(zip(names, want, strict=True))
    moved = max((plain.state.weights[k] - v).abs().max() for k, v in last.items())
    assert moved > 1e-3  # the corrections changed the trajectory
    c, c_i = fed.state.controls
    for name, value in c.items():  # c stays the mean of the devices' c_i
        torch.testing.assert_close(value, c_i[name].mean(0), rtol=0, atol=1e-6)


@pytest.mark.parametrize("engine", ["reference", "vectorized"])
def test_scaffold_with_one_device_always_sampled_equals_fedavg_through_fl_run(
    digits, engine
):
    cfg = fl.FedConfig(
        num_devices=1, participation=1.0, local_epochs=2, batch_size=16, rounds=4,
        hidden=16, engine=engine,
    )  # fmt: skip
    scaffolded = fl.Federation(cfg.replace(**fl.METHODS["scaffold"]), digits)
    fedavg = fl.Federation(cfg.replace(**fl.METHODS["fedavg"]), digits)
    scaffolded.run(), fedavg.run()
    for name, value in fedavg.state.weights.items():
        torch.testing.assert_close(
            scaffolded.state.weights[name], value, rtol=0, atol=1e-6
        )
    for column in ("accuracy", "loss", "train_loss"):
        assert scaffolded.history.column(column) == pytest.approx(
            fedavg.history.column(column), abs=1e-6
        )
    c, c_i = scaffolded.state.controls
    assert max(v.abs().max() for v in c.values()) > 1e-3  # c is far from zero
    for name, value in c.items():  # c = c_1: the correction c - c_1 is ~0
        torch.testing.assert_close(c_i[name][0], value, rtol=0, atol=1e-6)


def _algorithm_two_step(kind, x, delta, m, v, round_idx, cfg):
    """One server step of Reddi et al.'s Algorithm 2 in numpy (float64), read as
    Flower reads it: m and v start at 0, FedAdam's rate has the bias correction
    sqrt(1 - beta2^(t+1)) / (1 - beta1^(t+1))."""
    beta1, beta2, tau = cfg.server_opt_beta1, cfg.server_opt_beta2, cfg.server_opt_tau
    m = beta1 * m + (1 - beta1) * delta
    if kind == "adagrad":
        v = v + delta**2
    elif kind == "adam":
        v = beta2 * v + (1 - beta2) * delta**2
    else:
        v = v - (1 - beta2) * delta**2 * np.sign(v - delta**2)
    rate = cfg.server_opt_lr
    if kind == "adam":
        t = round_idx + 1
        rate *= np.sqrt(1 - beta2**t) / (1 - beta1**t)
    return x + rate * m / (np.sqrt(v) + tau), m, v


@pytest.mark.parametrize("method", ["fedadam", "fedyogi", "fedadagrad"])
def test_server_opt_through_fl_run_equals_algorithm_two_on_the_fedavg_model(
    digits, monkeypatch, method
):
    # Each round: the devices' FedAvg model (the size-weighted mean of what they
    # returned, recomputed here in numpy) enters the paper's formulas, whose own m
    # and v carry over; the result must be the round's new global model. Tolerance
    # 1e-5: m / (sqrt(v) + tau) amplifies float32 rounding where delta is ~tau, and
    # a step moves coordinates by up to server_opt_lr (>= 0.03).
    cfg = ROUNDS.replace(rounds=4, **fl.METHODS[method])
    calls = []
    _spy_engine(monkeypatch, cfg.engine, calls)
    fed = fl.Federation(cfg, digits)
    numpy = lambda w: {k: v.double().numpy() for k, v in w.items()}  # noqa: E731
    m = v = None
    for round_idx in range(1, cfg.rounds + 1):
        x = numpy(fed.state.weights)
        fed.step()
        call = calls[-1]
        share = np.asarray(call["sizes"], dtype=float) / sum(call["sizes"])
        trained = numpy(call["trained"])
        mean = {k: np.tensordot(share, w, axes=1) for k, w in trained.items()}
        if m is None:
            m = v = {k: np.zeros_like(w) for k, w in x.items()}
        out = {
            k: _algorithm_two_step(
                cfg.server_opt, x[k], mean[k] - x[k], m[k], v[k], round_idx, cfg
            )
            for k in x
        }
        m, v = {k: o[1] for k, o in out.items()}, {k: o[2] for k, o in out.items()}
        for name, (want, _, _) in out.items():
            np.testing.assert_allclose(
                fed.state.weights[name].numpy(), want, rtol=0, atol=1e-5
            )
            moved = np.abs(want - mean[name]).max()
        assert moved > 1e-3  # the server optimiser is not FedAvg's plain step


@pytest.mark.parametrize("model", ["mlp", "logreg"])
@pytest.mark.parametrize("method", ["fedprox", "scaffold", "fedadam"])
def test_engines_agree_through_fl_run_with_each_remedy(digits, model, method):
    # mu = 0.5 rather than the entry's 0.01, so that the proximal term matters.
    changes = {"proximal_mu": 0.5} if method == "fedprox" else {}
    cfg = ROUNDS.replace(model=model, **fl.METHODS[method]).replace(**changes)
    reference = fl.Federation(cfg.replace(engine="reference"), digits)
    fast = fl.Federation(cfg.replace(engine="vectorized"), digits)
    reference.run(), fast.run()
    for name, value in reference.state.weights.items():
        torch.testing.assert_close(fast.state.weights[name], value, rtol=0, atol=1e-5)
    carried = {"scaffold": "controls", "fedadam": "moments"}.get(method)
    if carried is not None:  # the method's memory agrees too
        for ref, vec in zip(
            getattr(reference.state, carried), getattr(fast.state, carried), strict=True
        ):
            for name, value in ref.items():
                torch.testing.assert_close(vec[name], value, rtol=0, atol=1e-5)
    assert reference.history.column("accuracy") == pytest.approx(
        fast.history.column("accuracy"), abs=1e-3
    )
