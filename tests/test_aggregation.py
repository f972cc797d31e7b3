import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fedlearn_lab as fl


def _weights(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(3, 4, generator=g), "b": torch.randn(4, generator=g)}


updates_strategy = st.lists(
    st.tuples(st.integers(0, 10_000), st.integers(1, 1000)), min_size=1, max_size=8
)


@settings(max_examples=50)
@given(updates_strategy, st.randoms(use_true_random=False))
def test_fedavg_is_order_independent_and_between_min_and_max(pairs, random):
    updates = [(_weights(s), n) for s, n in pairs]
    shuffled = list(updates)
    random.shuffle(shuffled)
    a, b = fl.fedavg(updates), fl.fedavg(shuffled)
    for k in a:
        torch.testing.assert_close(a[k], b[k])
        stacked = torch.stack([w[k] for w, _ in updates])
        assert torch.all(a[k] >= stacked.min(0).values - 1e-6)
        assert torch.all(a[k] <= stacked.max(0).values + 1e-6)


@given(st.integers(0, 10_000), st.lists(st.integers(1, 1000), min_size=1, max_size=6))
def test_fedavg_of_identical_weights_is_identity(seed, counts):
    w = _weights(seed)
    avg = fl.fedavg([(w, n) for n in counts])
    for k in w:
        torch.testing.assert_close(avg[k], w[k], rtol=0, atol=1e-6)


def test_fedavg_weights_by_sample_count():
    a = {"w": torch.zeros(2)}
    b = {"w": torch.ones(2)}
    torch.testing.assert_close(fl.fedavg([(a, 1), (b, 3)])["w"], torch.full((2,), 0.75))


def test_fedavg_needs_an_update():
    import pytest

    with pytest.raises(ValueError, match="at least one"):
        fl.fedavg([])
