"""Datasets that need no download: scikit-learn's digits, Synthetic(α, β), arrays.

Synthetic(alpha, beta) follows the recipe of the FedProx paper (Li et al., 2020,
"Federated Optimization in Heterogeneous Networks", https://arxiv.org/abs/1812.06127).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn import datasets as sk_datasets
from sklearn.model_selection import train_test_split

from .seeding import numpy_rng


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train and test tensors; features are flat rows, ``input_shape`` restores images.

    ``natural_partition`` is the split a dataset comes with (one index array into
    ``x_train`` per device), used by ``partition="natural"``.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    name: str
    input_shape: tuple[int, ...] = ()
    natural_partition: list[np.ndarray] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.input_shape:
            object.__setattr__(self, "input_shape", (self.x_train.shape[1],))

    @property
    def num_features(self) -> int:
        """Length of one flat feature row."""
        return self.x_train.shape[1]

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={len(self.y_train)}, "
            f"test={len(self.y_test)}, "
            f"features={self.num_features}, classes={self.num_classes})"
        )


def check_dataset(data: Any, *, name: str = "data") -> Dataset:
    """Return ``data`` if it is a well-formed :class:`Dataset`.

    A wrong type is a ``TypeError`` naming the argument ``name``; tensors of the
    wrong dtype or shape, lengths that disagree, labels outside
    ``0..num_classes-1`` or non-finite features are a ``ValueError``.
    """
    if not isinstance(data, Dataset):
        raise TypeError(
            f"{name} must be a fedlearn_lab Dataset (fl.load_digits(), fl.synthetic(), "
            f"fl.from_arrays(X, y)), got {type(data).__name__}"
        )
    if isinstance(data.num_classes, bool) or not isinstance(data.num_classes, int):
        raise ValueError(f"{name}.num_classes must be an int, got {data.num_classes!r}")
    for part in ("train", "test"):
        _check_split(data, part, name)
    features = data.x_train.shape[1]
    if data.x_test.shape[1] != features or math.prod(data.input_shape) != features:
        raise ValueError(
            f"{name} has {features} features per training row, {data.x_test.shape[1]} "
            f"per test row and input_shape {data.input_shape}: they must agree"
        )
    natural = data.natural_partition
    if natural is not None:
        joined = np.concatenate([np.asarray(p) for p in natural] or [np.zeros(0)])
        if len(joined) and (joined.min() < 0 or joined.max() >= len(data.y_train)):
            raise ValueError(
                f"{name}.natural_partition indexes outside the "
                f"{len(data.y_train)} training samples"
            )
    return data


def _check_split(data: Dataset, part: str, name: str) -> None:
    x, y = getattr(data, f"x_{part}"), getattr(data, f"y_{part}")
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32 or x.ndim != 2:
        raise ValueError(f"{name}.x_{part} must be a 2-D float32 tensor")
    if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.ndim != 1:
        raise ValueError(f"{name}.y_{part} must be a 1-D int64 tensor")
    if len(x) != len(y) or len(y) == 0:
        raise ValueError(
            f"{name}.x_{part} and {name}.y_{part} must hold the same number (> 0) of "
            f"samples, got {len(x)} and {len(y)}"
        )
    if y.min() < 0 or y.max() >= data.num_classes:
        raise ValueError(
            f"{name}.y_{part} must hold labels in [0, {data.num_classes - 1}], got "
            f"labels from {int(y.min())} to {int(y.max())}"
        )
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}.x_{part} holds NaN or Inf values")


def load_digits(*, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes)."""
    bunch = sk_datasets.load_digits()
    x = bunch.data.astype(np.float32) / 16.0  # pixel intensities 0..16 -> [0, 1]
    return from_arrays(
        x,
        bunch.target,
        test_fraction=test_fraction,
        seed=seed,
        name="digits",
        input_shape=(1, 8, 8),
    )


def load_dataset(spec: str, seed: int = 0) -> Dataset:
    """A built-in dataset by name: ``"digits"`` or ``"synthetic:ALPHA,BETA"``."""
    if spec == "digits":
        return load_digits(seed=seed)
    if spec.startswith("synthetic:"):
        try:
            alpha, beta = (float(v) for v in spec.split(":", 1)[1].split(","))
        except ValueError:
            pass
        else:
            return synthetic(alpha, beta, seed=seed)
    raise ValueError(
        f"dataset must be 'digits' or 'synthetic:ALPHA,BETA', got {spec!r}"
    )


def from_arrays(
    X: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    name: str = "arrays",
    input_shape: tuple[int, ...] | None = None,
) -> Dataset:
    """Any numeric features with integer labels, split into train and test by class.

    Labels are mapped to ``0..num_classes-1`` in sorted order; rows of ``X`` may be
    vectors or images (they are flattened, and ``input_shape`` remembers the shape).
    """
    _check_options(test_fraction, seed, input_shape)
    x_np = _as_numpy(X, "X")
    y_np = _as_numpy(y, "y")
    if x_np.ndim < 2 or math.prod(x_np.shape[1:]) == 0:
        raise ValueError(
            f"X must hold one row of >= 1 feature per sample, got shape {x_np.shape}"
        )
    if y_np.ndim != 1:
        raise ValueError(
            f"y must be 1-D (one label per sample), got shape {y_np.shape}"
        )
    if len(x_np) != len(y_np):
        raise ValueError(
            f"X and y must have the same length, got {len(x_np)} and {len(y_np)}"
        )
    if not np.issubdtype(x_np.dtype, np.number) or np.issubdtype(
        x_np.dtype, np.complexfloating
    ):
        raise ValueError(f"X must be real numbers, got dtype {x_np.dtype}")
    with np.errstate(over="ignore"):  # values beyond float32 become inf, refused next
        x_flat = x_np.reshape(len(x_np), math.prod(x_np.shape[1:])).astype(np.float32)
    if not np.all(np.isfinite(x_flat)):
        raise ValueError(
            "X contains NaN or Inf values (or values beyond float32's range); "
            "clean or impute them first"
        )
    labels = _integer_labels(y_np)
    classes, labels = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"y must hold at least two classes, got {len(classes)}")
    counts = np.bincount(labels)
    if counts.min() < 2:
        raise ValueError(
            f"every class needs at least 2 samples for a stratified split; "
            f"class {classes[counts.argmin()]!r} has {counts.min()}"
        )
    shape = tuple(input_shape) if input_shape is not None else tuple(x_np.shape[1:])
    if math.prod(shape) != x_flat.shape[1]:
        raise ValueError(
            f"input_shape {shape} does not hold {x_flat.shape[1]} features"
        )
    try:
        x_tr, x_te, y_tr, y_te = train_test_split(
            x_flat, labels, test_size=test_fraction, random_state=seed, stratify=labels
        )
    except ValueError as err:  # too few samples for a class in one of the two parts
        raise ValueError(
            f"cannot split {len(labels)} samples by class: {err}"
        ) from None
    return Dataset(
        x_train=torch.from_numpy(x_tr),
        y_train=torch.from_numpy(y_tr.astype(np.int64)),
        x_test=torch.from_numpy(x_te),
        y_test=torch.from_numpy(y_te.astype(np.int64)),
        num_classes=len(classes),
        name=name,
        input_shape=shape,
    )


def synthetic(
    alpha: float,
    beta: float,
    num_devices: int = 30,
    seed: int = 0,
    *,
    num_features: int = 60,
    num_classes: int = 10,
) -> Dataset:
    """Synthetic(alpha, beta) of the FedProx paper, with its natural per-device split.

    Device k draws ``u_k ~ N(0, alpha)`` and ``B_k ~ N(0, beta)``; its model is
    ``W_k, b_k ~ N(u_k, 1)``, its inputs ``x ~ N(v_k, diag(j^-1.2))`` with
    ``v_k ~ N(B_k, 1)``, and ``y = argmax(W_k^T x + b_k)``. It holds
    ``lognormal(4, 2) + 50`` samples, 90% for training and 10% for testing.
    ``alpha`` sets how much the devices' models differ, ``beta`` how much their data do.
    """
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not (isinstance(value, float | int) and np.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    if (
        isinstance(num_devices, bool)
        or not isinstance(num_devices, int)
        or num_devices < 1
    ):
        raise ValueError(f"num_devices must be an integer >= 1, got {num_devices!r}")
    rng = numpy_rng(seed, "synthetic")
    sizes = rng.lognormal(4, 2, num_devices).astype(int) + 50
    u = rng.normal(0, alpha, num_devices)
    b_shift = rng.normal(0, beta, num_devices)
    std = np.arange(1, num_features + 1) ** -0.6  # sqrt of the diagonal j^-1.2
    parts = {"x_train": [], "y_train": [], "x_test": [], "y_test": []}
    natural, start = [], 0
    for k in range(num_devices):
        w = rng.normal(u[k], 1, (num_features, num_classes))
        bias = rng.normal(u[k], 1, num_classes)
        v = rng.normal(b_shift[k], 1, num_features)
        x = (v + std * rng.standard_normal((sizes[k], num_features))).astype(np.float32)
        y = np.argmax(x @ w + bias, axis=1)
        n_train = int(0.9 * sizes[k])
        parts["x_train"].append(x[:n_train])
        parts["y_train"].append(y[:n_train])
        parts["x_test"].append(x[n_train:])
        parts["y_test"].append(y[n_train:])
        natural.append(np.arange(start, start + n_train))
        start += n_train
    tensors = {key: torch.from_numpy(np.concatenate(val)) for key, val in parts.items()}
    return Dataset(
        x_train=tensors["x_train"],
        y_train=tensors["y_train"].long(),
        x_test=tensors["x_test"],
        y_test=tensors["y_test"].long(),
        num_classes=num_classes,
        name=f"synthetic({alpha:g},{beta:g})",
        natural_partition=natural,
    )


def _check_options(test_fraction: Any, seed: Any, input_shape: Any) -> None:
    if (
        isinstance(test_fraction, bool)
        or not isinstance(test_fraction, float | int)
        or not 0 < test_fraction < 1
    ):
        raise ValueError(
            f"test_fraction must be a number in (0, 1), got {test_fraction!r}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    if input_shape is not None and (
        not isinstance(input_shape, tuple | list)
        or not input_shape
        or any(isinstance(d, bool) or not isinstance(d, int) for d in input_shape)
        or min(input_shape) < 1
    ):
        raise ValueError(
            f"input_shape must be None or a tuple of sizes >= 1, got {input_shape!r}"
        )


def _as_numpy(a: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    try:
        return np.asarray(a)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be array-like: {err}") from None


def _integer_labels(y: np.ndarray) -> np.ndarray:
    if np.issubdtype(y.dtype, np.integer):
        return y.astype(np.int64)
    if (
        np.issubdtype(y.dtype, np.floating)
        and np.all(np.abs(y) < 2**53)  # also False for NaN and Inf
        and np.all(y == np.round(y))
    ):
        return y.astype(np.int64)
    raise ValueError(f"y must hold integer class labels, got dtype {y.dtype}")
