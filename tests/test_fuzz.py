"""Hypothesis fuzzing of user input: any value either works or raises ValueError."""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fedlearn_lab as fl
from fedlearn_lab.aggregation import validate_update

FIELDS = {f.name: f for f in dataclasses.fields(fl.FedConfig)}

# Anything a slider, a text box, JSON or a careless caller might hand over.
ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([10**400, -(10**400)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, 0.5, 0.999, 1e-300, 1e300, 2, 3, 5]),
    st.text(max_size=5),
    st.sampled_from(["1", "0.5", "nan", "iid", "mlp", "median", "sign_flip", "krum"]),
    st.lists(st.integers(-2, 12), max_size=4),
    st.tuples(st.integers(0, 9)),
    st.just(()),
    # numpy scalars, as sweeps over np.arange / np.linspace hand them over
    st.integers(-(2**63), 2**63 - 1).map(np.int64),
    st.integers(0, 255).map(np.uint8),
    st.floats(width=32).map(np.float32),
    st.floats().map(np.float64),
    st.sampled_from([np.float32(0.25), np.int64(10), np.bool_(True), np.str_("iid")]),
)


def either(
    good: st.SearchStrategy, bad: st.SearchStrategy, odds: int = 1
) -> st.SearchStrategy:
    """``odds`` good draws to one bad (a plain one_of would flatten ``bad``'s many
    branches and hardly ever draw ``good``)."""
    return st.integers(0, odds).flatmap(lambda i: good if i else bad)


def _field_value(name: str) -> st.SearchStrategy:
    return either(st.just(FIELDS[name].default), ANY_VALUE)


CONFIG_KWARGS = st.fixed_dictionaries(
    {}, optional={name: _field_value(name) for name in FIELDS}
)


@settings(max_examples=600, deadline=None)
@given(CONFIG_KWARGS)
def test_fedconfig_constructs_or_raises_value_error_naming_a_field(kwargs):
    try:
        cfg = fl.FedConfig(**kwargs)
    except ValueError as err:
        event("refused")
        field_name = str(err).split(" ", 1)[0]
        assert field_name in FIELDS, str(err)
    else:
        event("built")
        assert fl.FedConfig.from_dict(cfg.to_dict()) == cfg
        hash(cfg)  # frozen scalar config: usable as a cache key
        for name in FIELDS:  # numpy scalars were stored as Python ones
            assert not isinstance(getattr(cfg, name), np.generic), name


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("dropout", 1.5),
        ("dropout", "0.1"),
        ("deadline", 0),
        ("deadline", math.inf),
        ("max_norm_ratio", 0.5),
        ("malicious_fraction", -0.1),
        ("attack", "sybil"),
        ("attack_strength", 0),
        ("aggregator", "mean"),
        ("aggregator", None),
        ("shared_classes", 3),
    ],
)
def test_fedconfig_rejects_bad_fault_settings_by_name(name, value):
    with pytest.raises(ValueError, match=rf"^{name} must be .*{value!r}"):
        fl.FedConfig(**{name: value})


# ---- from_arrays ----------------------------------------------------------------

DTYPES = st.sampled_from(
    [
        np.float32,
        np.float64,
        np.int64,
        np.int8,
        np.uint8,
        np.bool_,
        np.complex64,
        np.float16,
    ]
)
FEATURES = hnp.arrays(
    DTYPES,
    hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=12),
    elements={"allow_nan": True, "allow_infinity": True, "allow_subnormal": False},
)
LABELS = st.one_of(
    hnp.arrays(
        st.sampled_from([np.int64, np.int32, np.float64, np.bool_]),
        hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=12),
        elements={"allow_nan": True, "allow_subnormal": False},
    ),
    st.lists(st.sampled_from(["a", "b", 1, 2.5, None]), max_size=12).map(
        lambda v: np.array(v, dtype=object)
    ),
)


@st.composite
def matched_arrays(draw):
    """Mostly well-formed: same length, a few classes, so the happy path is reached."""
    n = draw(st.integers(0, 40))
    features = draw(st.integers(0, 5))
    dtype = draw(st.sampled_from([np.float32, np.float64, np.int64, np.uint8]))
    x = draw(hnp.arrays(dtype, (n, features), elements=st.integers(0, 255)))
    classes = draw(st.integers(2, 3))
    y = np.array(draw(st.permutations([i % classes for i in range(n)])), dtype=np.int64)
    return x, y


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    arrays=either(matched_arrays(), st.tuples(FEATURES, LABELS)),
    test_fraction=either(st.just(0.25), ANY_VALUE, odds=3),
    seed=either(st.integers(0, 2**32 - 1), ANY_VALUE, odds=3),
    input_shape=either(
        st.none(),
        st.one_of(
            st.tuples(st.integers(-3, 6)),
            st.tuples(st.integers(-2, 4), st.integers(-2, 4)),
            ANY_VALUE,
        ),
        odds=3,
    ),
    as_tensor=st.booleans(),
)
def test_from_arrays_builds_a_dataset_or_raises_value_error(
    arrays, test_fraction, seed, input_shape, as_tensor
):
    x, y = arrays
    if as_tensor and x.dtype not in (np.float16, np.uint8) and y.dtype != object:
        x, y = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)
    try:
        data = fl.from_arrays(
            x, y, test_fraction=test_fraction, seed=seed, input_shape=input_shape
        )
    except ValueError:
        event("refused")
        return
    event("built")
    assert len(data.y_train) + len(data.y_test) == len(y)
    assert torch.isfinite(data.x_train).all() and torch.isfinite(data.x_test).all()
    assert data.num_features >= 1 and all(d >= 1 for d in data.input_shape)
    assert data.num_classes >= 2 and int(data.y_train.max()) < data.num_classes


# ---- malformed device updates ---------------------------------------------------

REFERENCE = {"fc.weight": torch.zeros(3, 2), "fc.bias": torch.zeros(3)}
TENSORS = st.one_of(
    hnp.arrays(
        st.sampled_from([np.float32, np.float64, np.int64, np.float16]),
        st.sampled_from([(3, 2), (3,), (2, 3), (), (3, 2, 1), (0,)]),
        elements={"allow_nan": True, "allow_infinity": True, "allow_subnormal": False},
    ).map(torch.from_numpy),
    st.sampled_from([None, 1.0, "w", [[0.0, 0.0]] * 3]),
)
UPDATES = st.one_of(
    st.fixed_dictionaries({"fc.weight": TENSORS, "fc.bias": TENSORS}),
    st.dictionaries(
        st.sampled_from(["fc.weight", "fc.bias", "other"]), TENSORS, max_size=3
    ),
    st.sampled_from([None, 0, "update", [], {}]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(UPDATES, max_size=6), st.sampled_from([None, 1.0, 3.0, 100.0]))
def test_validate_update_gives_a_reason_for_any_malformed_update(updates, ratio):
    reasons = [validate_update(u, REFERENCE) for u in updates]
    assert len(reasons) == len(updates)
    for update, reason in zip(updates, reasons, strict=True):
        well_formed = (
            isinstance(update, dict)
            and update.keys() == REFERENCE.keys()
            and all(
                isinstance(v, torch.Tensor)
                and v.shape == REFERENCE[k].shape
                and v.dtype == torch.float32
                and bool(torch.isfinite(v).all())
                for k, v in update.items()
            )
        )
        assert (reason is None) == well_formed, (update, reason)
    accepted = [u for u, r in zip(updates, reasons, strict=True) if r is None]
    if accepted:
        fl.fedavg([(u, 1) for u in accepted])  # what passes can be aggregated


# ---- damaged files: every loader answers with a ValueError naming the file --------


@pytest.fixture(scope="module")
def saved_files(tmp_path_factory):
    """The bytes of a saved model folder and of a checkpoint after one round."""
    cfg = fl.FedConfig(num_devices=5, participation=1.0, rounds=2, local_epochs=1)
    fed = fl.Federation(cfg)
    fed.step()
    root = tmp_path_factory.mktemp("saved")
    fl.save_model(fed.publish(), root / "model", cfg)
    return {
        "model.pt": (root / "model" / "model.pt").read_bytes(),
        "config.json": (root / "model" / "config.json").read_bytes(),
        "run.ckpt": fed.save(root / "run.ckpt").read_bytes(),
    }


def _damage(raw: bytes, data) -> bytes:
    """Flip, cut or overwrite bytes somewhere in ``raw``."""
    how = data.draw(st.sampled_from(["flip", "cut", "overwrite"]))
    at = data.draw(st.integers(0, len(raw) - 1))
    if how == "cut":
        return raw[:at]
    if how == "flip":
        return (
            raw[:at] + bytes([raw[at] ^ data.draw(st.integers(1, 255))]) + raw[at + 1 :]
        )
    patch = data.draw(st.binary(min_size=1, max_size=16))
    return raw[:at] + patch + raw[at + len(patch) :]


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data(), name=st.sampled_from(["model.pt", "config.json"]))
def test_a_damaged_model_folder_loads_or_is_a_value_error(
    tmp_path, saved_files, data, name
):
    folder = Path(tempfile.mkdtemp(dir=tmp_path))  # one per example
    for file_name in ("model.pt", "config.json"):
        raw = saved_files[file_name]
        (folder / file_name).write_bytes(
            _damage(raw, data) if file_name == name else raw
        )
    try:
        model, _ = fl.load_model(folder)
    except ValueError as err:
        event("refused")
        assert str(folder) in str(err)
        return
    event("loaded")  # a change that left it valid (e.g. in JSON whitespace)
    assert all(bool(torch.isfinite(v).all()) for v in model.state_dict().values())


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_a_damaged_checkpoint_loads_or_is_a_value_error(tmp_path, saved_files, data):
    path = Path(tempfile.mkdtemp(dir=tmp_path)) / "run.ckpt"
    path.write_bytes(_damage(saved_files["run.ckpt"], data))
    try:
        fed = fl.Federation.load(path)
    except ValueError as err:
        event("refused")
        assert str(path) in str(err)
        return
    event("loaded")
    fed.step()  # whatever loads, runs
