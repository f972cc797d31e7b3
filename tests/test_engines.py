"""The vectorized engine computes what the reference per-device loop computes."""

from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fedlearn_lab as fl
from fedlearn_lab import aggregation, reference, vectorized
from fedlearn_lab.models import make_model

MODELS = ("logreg", "mlp", "cnn")


def _both_engines(cfg, data):
    engines = ("reference", "vectorized")
    return (fl.Federation(cfg.replace(engine=e), data) for e in engines)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(
    "partition, skew, quantity_skew",
    [("iid", 1.0, 1.5), ("dirichlet", 0.3, 0.0), ("shards", 2, 0.0)],
)
def test_engines_agree_after_three_rounds(
    digits, model, partition, skew, quantity_skew
):
    # Unequal device sizes (quantity skew, Dirichlet), two local epochs and a batch
    # size that divides no device's size: the last batch of each epoch is short.
    cfg = fl.FedConfig(
        num_devices=16, participation=0.25, partition=partition, skew=skew,
        quantity_skew=quantity_skew, local_epochs=2, batch_size=7, server_steps=3,
        rounds=3, model=model, hidden=16,
    )  # fmt: skip
    reference, fast = _both_engines(cfg, digits)
    ref, vec = reference.run(), fast.run()
    sizes = {len(reference.device_indices[k]) for r in ref for k in r.devices}
    assert len(sizes) > 1 and any(n % cfg.batch_size for n in sizes)
    for name, value in reference.state.weights.items():
        torch.testing.assert_close(fast.state.weights[name], value, rtol=0, atol=1e-5)
    assert [r.devices for r in ref] == [r.devices for r in vec]
    for name in ("accuracy", "aggregate_accuracy", "train_loss", "loss", "server_loss"):
        assert ref.column(name) == pytest.approx(vec.column(name), abs=1e-3), name


@pytest.mark.parametrize("method", ["feddu", "hybrid", "data_sharing"])
def test_engines_agree_for_every_use_of_the_shared_dataset(digits, method):
    cfg = fl.FedConfig(
        num_devices=20, participation=0.2, local_epochs=2, batch_size=7, rounds=3,
        dropout=0.2, **fl.METHODS[method],
    )  # fmt: skip
    reference, fast = _both_engines(cfg, digits)
    ref, vec = reference.run(), fast.run()
    for name, value in reference.state.weights.items():
        torch.testing.assert_close(fast.state.weights[name], value, rtol=0, atol=1e-5)
    assert ref.column("accuracy") == pytest.approx(vec.column("accuracy"), abs=1e-3)
    assert [r.failures for r in ref] == [r.failures for r in vec]


def _random_devices(sizes, seed=0):
    order = torch.randperm(1000, generator=torch.Generator().manual_seed(seed))
    return list(torch.split(order[: sum(sizes)], list(sizes)))


def _model(name, data, seed=0):
    return make_model(name, data.input_shape, 10, torch.Generator().manual_seed(seed))


def _train_both(model_name, digits, sizes, *, epochs, batch_size, lr=0.2, **remedies):
    model = _model(model_name, digits)
    weights = dict(model.state_dict())
    args = (model, weights, digits.x_train, digits.y_train, _random_devices(sizes))
    kwargs = dict(epochs=epochs, lr=lr, batch_size=batch_size, **remedies)
    results = []  # (stacked weights, losses): the reference's, then the vectorized
    for train in (reference.train_each, vectorized.train_devices):
        trained, losses = train(
            *args, **kwargs, generator=torch.Generator().manual_seed(1)
        )
        results.append((trained, losses))
    return weights, *results


@pytest.mark.parametrize("model", MODELS)
def test_each_device_takes_exactly_its_own_steps(digits, model):
    # 1 step, 2 steps with a short last batch, exactly 1 full batch, 3 steps: devices
    # finish at different steps and must not move afterwards.
    sizes = [1, 9, 8, 17, 3]
    initial, (ref_w, ref_loss), (vec_w, vec_loss) = _train_both(
        model, digits, sizes, epochs=3, batch_size=8
    )
    for name in initial:
        assert vec_w[name].shape == (len(sizes), *initial[name].shape)
        torch.testing.assert_close(vec_w[name], ref_w[name], rtol=0, atol=1e-6)
    torch.testing.assert_close(vec_loss, ref_loss, rtol=1e-6, atol=1e-6)


def _corrections(digits, model, num_devices, size=0.05, seed=4):
    """Random SCAFFOLD corrections c - c_i, one row per device."""
    g = torch.Generator().manual_seed(seed)
    weights = _model(model, digits).state_dict()
    return {
        k: size * torch.randn(num_devices, *v.shape, generator=g)
        for k, v in weights.items()
    }


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("remedy", ["fedprox", "scaffold", "both"])
def test_engines_agree_with_fedprox_and_scaffold(digits, model, remedy):
    # Devices finish at different steps (sizes 1 to 30, batches of 8, 3 epochs); the
    # proximal term and the corrections must follow each device's own steps.
    sizes = [1, 9, 8, 30, 3]
    remedies = {}
    if remedy in ("fedprox", "both"):
        remedies["mu"] = 0.5
    if remedy in ("scaffold", "both"):
        remedies["corrections"] = _corrections(digits, model, len(sizes))
    initial, (ref_w, ref_loss), (vec_w, vec_loss) = _train_both(
        model, digits, sizes, epochs=3, batch_size=8, **remedies
    )
    _, (plain_w, _), _ = _train_both(model, digits, sizes, epochs=3, batch_size=8)
    for name in initial:
        torch.testing.assert_close(vec_w[name], ref_w[name], rtol=0, atol=1e-5)
    torch.testing.assert_close(vec_loss, ref_loss, rtol=1e-5, atol=1e-5)
    assert any((ref_w[k] - plain_w[k]).abs().max() > 1e-4 for k in initial)


def test_devices_with_remedies_trained_in_chunks_equal_the_reference(
    digits, monkeypatch
):
    sizes = [30, 1, 17, 9, 8, 12, 3]
    one_model = sum(p.numel() * 4 for p in _model("mlp", digits).parameters())
    monkeypatch.setattr(vectorized, "_CACHE_BYTES", 2 * one_model)  # chunks of 2
    remedies = dict(mu=0.3, corrections=_corrections(digits, "mlp", len(sizes)))
    initial, (reference, _), (chunked, _) = _train_both(
        "mlp", digits, sizes, epochs=2, batch_size=8, **remedies
    )
    for name in initial:
        torch.testing.assert_close(chunked[name], reference[name], rtol=0, atol=1e-5)


def test_devices_trained_in_chunks_equal_devices_trained_together(digits, monkeypatch):
    sizes = [30, 1, 17, 9, 8, 12, 3]
    _, _, (together, together_loss) = _train_both(
        "mlp", digits, sizes, epochs=2, batch_size=8
    )
    one_model = sum(p.numel() * 4 for p in _model("mlp", digits).parameters())
    monkeypatch.setattr(vectorized, "_CACHE_BYTES", 2 * one_model)  # chunks of 2
    initial, (reference, _), (chunked, chunked_loss) = _train_both(
        "mlp", digits, sizes, epochs=2, batch_size=8
    )
    for name in initial:
        torch.testing.assert_close(chunked[name], together[name], rtol=0, atol=1e-6)
        torch.testing.assert_close(chunked[name], reference[name], rtol=0, atol=1e-6)
    torch.testing.assert_close(chunked_loss, together_loss, rtol=1e-6, atol=1e-6)


@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=8),
    epochs=st.integers(1, 3),
    batch_size=st.integers(1, 20),
)
def test_engines_agree_for_any_sizes_epochs_and_batch_size(
    digits, sizes, epochs, batch_size
):
    _, (ref_w, ref_loss), (vec_w, vec_loss) = _train_both(
        "logreg", digits, sizes, epochs=epochs, batch_size=batch_size
    )
    for name, value in ref_w.items():
        torch.testing.assert_close(vec_w[name], value, rtol=0, atol=1e-5)
    torch.testing.assert_close(vec_loss, ref_loss, rtol=1e-5, atol=1e-5)


@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=6),
    epochs=st.integers(1, 3),
    batch_size=st.integers(1, 20),
    mu=st.sampled_from([0.0, 0.01, 0.5, 2.0]),
    scaffold=st.booleans(),
)
def test_engines_agree_with_remedies_for_any_sizes_epochs_and_batch_size(
    digits, sizes, epochs, batch_size, mu, scaffold
):
    remedies = {"mu": mu}
    if scaffold:
        remedies["corrections"] = _corrections(digits, "logreg", len(sizes))
    _, (ref_w, ref_loss), (vec_w, vec_loss) = _train_both(
        "logreg", digits, sizes, epochs=epochs, batch_size=batch_size, **remedies
    )
    for name, value in ref_w.items():
        torch.testing.assert_close(vec_w[name], value, rtol=0, atol=1e-5)
    torch.testing.assert_close(vec_loss, ref_loss, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model", MODELS)
def test_vectorized_sgd_with_remedies_equals_reference_sgd(digits, model):
    net = _model(model, digits)
    weights = dict(net.state_dict())
    g = torch.Generator().manual_seed(2)
    batches = [torch.randint(0, 1000, (n,), generator=g) for n in (32, 32, 5, 1)]
    correction = {k: v[0] for k, v in _corrections(digits, model, 1).items()}
    args = (net, weights, digits.x_train, digits.y_train, batches)
    remedies = dict(lr=0.3, mu=0.4, correction=correction)
    ref, ref_losses = reference.sgd(*args, **remedies)
    vec, vec_losses = vectorized.sgd(*args, **remedies)
    plain, _ = reference.sgd(*args, lr=0.3)
    for name, value in ref.items():
        torch.testing.assert_close(vec[name], value, rtol=0, atol=1e-6)
    torch.testing.assert_close(vec_losses, ref_losses, rtol=1e-6, atol=1e-6)
    assert any((ref[k] - plain[k]).abs().max() > 1e-4 for k in ref)


@pytest.mark.parametrize("model", MODELS)
def test_vectorized_sgd_equals_reference_sgd(digits, model):
    net = _model(model, digits)
    weights = dict(net.state_dict())
    g = torch.Generator().manual_seed(2)
    batches = [torch.randint(0, 1000, (n,), generator=g) for n in (32, 32, 5, 1)]
    args = (net, weights, digits.x_train, digits.y_train, batches)
    ref, ref_losses = reference.sgd(*args, lr=0.3)
    vec, vec_losses = vectorized.sgd(*args, lr=0.3)
    for name, value in ref.items():
        torch.testing.assert_close(vec[name], value, rtol=0, atol=1e-6)
    torch.testing.assert_close(vec_losses, ref_losses, rtol=1e-6, atol=1e-6)
    assert not any(torch.equal(vec[k], weights[k]) for k in weights)  # it did train


def test_vectorized_sgd_without_batches_changes_nothing(digits):
    net = _model("mlp", digits)
    weights = dict(net.state_dict())
    new, losses = vectorized.sgd(net, weights, digits.x_train, digits.y_train, [], lr=1)
    assert all(torch.equal(new[k], weights[k]) for k in weights) and losses.numel() == 0


@pytest.mark.parametrize("model", MODELS)
def test_batched_evaluation_equals_one_model_at_a_time(digits, model):
    nets = [_model(model, digits, seed) for seed in range(3)]
    weights = [dict(n.state_dict()) for n in nets]
    expected = reference.evaluate_each(nets[0], weights, digits.x_test, digits.y_test)
    got = vectorized.evaluate(nets[0], weights, digits.x_test, digits.y_test)
    assert len({acc for acc, _ in expected}) > 1  # the three models do differ
    for (acc, loss), (ref_acc, ref_loss) in zip(got, expected, strict=True):
        assert acc == ref_acc and loss == pytest.approx(ref_loss, rel=1e-6)


def test_vectorized_engine_is_deterministic(digits):
    cfg = fl.FedConfig(num_devices=20, participation=0.3, rounds=4, engine="vectorized")
    first, second = (fl.Federation(cfg, digits) for _ in range(2))
    assert first.run().records == second.run().records
    weights = second.state.weights
    assert all(torch.equal(first.state.weights[k], v) for k, v in weights.items())
    other = fl.Federation(cfg.replace(seed=1), digits).run()
    assert other.records != first.history.records


def test_engine_must_be_known():
    with pytest.raises(ValueError, match="engine must be one of 'vectorized', 'ref"):
        fl.FedConfig(engine="gpu")
    assert fl.FedConfig().engine == "vectorized"


def _screen_one_by_one(updates, reference, ratio):
    """aggregation.screen_updates as the definition reads: update by update."""
    reasons = [aggregation.validate_update(u, reference) for u in updates]
    norms = {
        i: aggregation.delta_norm(u, reference)
        for i, u in enumerate(updates)
        if reasons[i] is None
    }
    if ratio is not None and norms:
        limit = ratio * float(np.median(list(norms.values())))
        reasons = [
            "norm" if i in norms and not norms[i] <= limit else r
            for i, r in enumerate(reasons)
        ]
    return reasons


_VALUES = st.sampled_from([0.0, 1.0, -2.0, 1e3, 1e30, 3e38, float("nan"), float("inf")])


@given(
    st.lists(st.tuples(_VALUES, _VALUES), max_size=7),  # (weight, bias) fills
    st.sampled_from([None, 1.0, 2.0, 100.0]),
)
def test_screening_all_updates_at_once_equals_one_by_one(specs, ratio):
    reference = {"fc.weight": torch.ones(3, 4), "fc.bias": torch.zeros(3)}
    updates = [
        {"fc.weight": torch.full((3, 4), w), "fc.bias": torch.full((3,), b)}
        for w, b in specs
    ]
    expected = _screen_one_by_one(updates, reference, ratio)
    stacked = {
        k: torch.stack([u[k] for u in updates]) if updates else v.new_empty(0, *v.shape)
        for k, v in reference.items()
    }
    screen = aggregation.screen_updates
    assert screen(stacked, reference, max_norm_ratio=ratio) == expected
    with mock.patch.object(aggregation, "_GROUP_BYTES", 2 * 8 * 15):  # 2 updates
        assert screen(stacked, reference, max_norm_ratio=ratio) == expected
