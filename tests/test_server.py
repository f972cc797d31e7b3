import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fedlearn_lab as fl
from fedlearn_lab import reference
from fedlearn_lab.models import make_model
from fedlearn_lab.server import shared_batches


def _setup(seed=0):
    model = make_model("mlp", (8,), 3, torch.Generator().manual_seed(seed), hidden=5)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(40, 8, generator=g), torch.randint(0, 3, (40,), generator=g)
    return model, dict(model.state_dict()), x, y


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 1000), batch=st.integers(1, 64))
def test_zero_server_steps_change_nothing(seed, batch):
    model, w, x, y = _setup(seed)
    out, stats = fl.server_adjust(
        model, w, x, y, steps=0, lr=0.1, batch_size=batch, generator=torch.Generator()
    )
    assert stats.server_steps == 0
    for k in w:
        assert torch.equal(out[k], w[k])


def test_server_steps_lower_the_shared_loss():
    model, w, x, y = _setup()
    before = reference.evaluate(model, w, x, y)[1]
    out, stats = fl.server_adjust(
        model,
        w,
        x,
        y,
        steps=50,
        lr=0.5,
        batch_size=40,
        generator=torch.Generator().manual_seed(0),
    )
    assert stats.server_steps == 50
    assert reference.evaluate(model, out, x, y)[1] < before


def test_server_adjust_leaves_its_input_untouched():
    model, w, x, y = _setup()
    copy = {k: v.clone() for k, v in w.items()}
    fl.server_adjust(
        model, w, x, y, steps=3, lr=0.5, batch_size=8, generator=torch.Generator()
    )
    for k in w:
        assert torch.equal(w[k], copy[k])


@given(n=st.integers(1, 50), steps=st.integers(1, 20), batch=st.integers(1, 64))
def test_shared_batches_cover_the_set_evenly(n, steps, batch):
    batches = shared_batches(
        n, steps=steps, batch_size=batch, generator=torch.Generator()
    )
    size = min(batch, n)
    assert len(batches) == steps and all(len(b) == size for b in batches)
    counts = torch.bincount(torch.cat(batches), minlength=n)
    assert (
        counts.max() - counts.min() <= 1 or steps * size > n
    )  # within a pass, no repeats
    first_pass = torch.cat(batches)[:n] if steps * size >= n else torch.cat(batches)
    assert len(torch.unique(first_pass)) == len(first_pass)
