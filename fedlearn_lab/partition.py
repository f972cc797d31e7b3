"""Split training indices into a shared dataset and one partition per device.

Every function maps labels to index arrays: each training sample goes to exactly
one device or to the shared dataset, and no device is left empty.
Label skew follows Hsu et al. 2019 (Dirichlet, https://arxiv.org/abs/1909.06335) and
McMahan et al. 2017 (shards, https://arxiv.org/abs/1602.05629).
"""

from __future__ import annotations

import numpy as np

from .config import FedConfig


def shared_split(
    labels: np.ndarray,
    fraction: float,
    rng: np.random.Generator,
    *,
    num_classes: int,
    classes: tuple[int, ...] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``round(fraction * n)`` indices for the shared dataset -> (shared, rest).

    The draw is class-balanced: the allowed classes (all, or ``classes`` for a biased
    shared dataset) get equal shares, as far as each class has samples.
    """
    allowed = np.arange(num_classes) if classes is None else np.asarray(classes)
    if allowed.max() >= num_classes:
        raise ValueError(
            f"shared_classes must name classes in [0, {num_classes - 1}], got {classes}"
        )
    total = round(fraction * len(labels))
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in allowed]
    quota = _balanced_quota(total, np.array([len(p) for p in pools]))
    shared = np.concatenate([p[:q] for p, q in zip(pools, quota, strict=True)])
    shared = np.sort(shared).astype(np.int64)
    rest = np.setdiff1d(np.arange(len(labels)), shared)
    return shared, rest


def _balanced_quota(total: int, available: np.ndarray) -> np.ndarray:
    """Split ``total`` as evenly as possible over bins of limited size (water-fill)."""
    quota = np.zeros_like(available)
    remaining = min(total, int(available.sum()))
    while remaining > 0:
        open_bins = np.flatnonzero(quota < available)
        share = max(remaining // len(open_bins), 1)
        for b in open_bins[:remaining] if share == 1 else open_bins:
            add = min(share, available[b] - quota[b], remaining)
            quota[b] += add
            remaining -= add
    return quota


def iid(
    num_samples: int,
    num_devices: int,
    rng: np.random.Generator,
    *,
    quantity_skew: float = 0.0,
) -> list[np.ndarray]:
    """Shuffle, then cut into ``num_devices`` parts.

    Without quantity skew the sizes differ by at most one; with it, sizes follow
    ``lognormal(0, quantity_skew)`` weights (each device keeps at least one sample).
    """
    _check_enough(num_samples, num_devices)
    order = rng.permutation(num_samples)
    sizes = _device_sizes(num_samples, num_devices, rng, quantity_skew)
    return [np.sort(part) for part in np.split(order, np.cumsum(sizes)[:-1])]


def _device_sizes(
    num_samples: int, num_devices: int, rng: np.random.Generator, sigma: float
) -> np.ndarray:
    if sigma == 0:
        base, extra = divmod(num_samples, num_devices)
        return np.array([base + (i < extra) for i in range(num_devices)])
    weights = rng.lognormal(0.0, sigma, num_devices)
    # One sample each first, the rest in proportion to the weights (largest remainder).
    spare = num_samples - num_devices
    raw = spare * weights / weights.sum()
    sizes = np.floor(raw).astype(int)
    sizes[np.argsort(raw - sizes)[::-1][: spare - sizes.sum()]] += 1
    return sizes + 1


def dirichlet(
    labels: np.ndarray,
    num_devices: int,
    alpha: float,
    rng: np.random.Generator,
    *,
    quantity_skew: float = 0.0,
) -> list[np.ndarray]:
    """Label skew: each class spreads over the devices in ``Dirichlet(alpha)`` shares.

    Smaller ``alpha`` means more skew. A device left empty by the draw takes one
    sample from the largest device, so every device holds data.
    """
    _check_enough(len(labels), num_devices)
    weights = (
        rng.lognormal(0.0, quantity_skew, num_devices)
        if quantity_skew > 0
        else np.ones(num_devices)
    )
    parts: list[list[np.ndarray]] = [[] for _ in range(num_devices)]
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        share = rng.dirichlet(np.full(num_devices, alpha)) * weights
        cuts = np.round(np.cumsum(share / share.sum())[:-1] * len(members)).astype(int)
        for device, piece in enumerate(np.split(members, cuts)):
            parts[device].append(piece)
    devices = [np.concatenate(p) for p in parts]
    _fill_empty(devices)
    return [np.sort(d).astype(np.int64) for d in devices]


def _fill_empty(devices: list[np.ndarray]) -> None:
    for i, part in enumerate(devices):
        if len(part) == 0:
            donor = max(range(len(devices)), key=lambda j: len(devices[j]))
            devices[i], devices[donor] = devices[donor][-1:], devices[donor][:-1]


def shards(
    labels: np.ndarray,
    num_devices: int,
    classes_per_device: int,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """The pathological split: sort by label, cut into ``num_devices * k`` shards, and
    give each device ``k`` random shards, so it sees about ``k`` classes."""
    num_shards = num_devices * classes_per_device
    if num_shards > len(labels):
        raise ValueError(
            f"shards needs num_devices * skew <= {len(labels)} training samples, "
            f"got {num_devices} * {classes_per_device} = {num_shards}"
        )
    # Shuffle first so the order inside a class is random, then sort stably by label.
    shuffled = rng.permutation(len(labels))
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    pieces = np.array_split(by_label, num_shards)
    owner = rng.permutation(num_shards) % num_devices
    return [
        np.sort(np.concatenate([pieces[s] for s in np.flatnonzero(owner == d)])).astype(
            np.int64
        )
        for d in range(num_devices)
    ]


def _check_enough(num_samples: int, num_devices: int) -> None:
    if num_devices > num_samples:
        raise ValueError(
            f"num_devices must be at most the {num_samples} training samples left for "
            f"devices, got {num_devices}"
        )


def partition_devices(
    labels: np.ndarray,
    cfg: FedConfig,
    rng: np.random.Generator,
    natural: list[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Apply ``cfg.partition`` to ``labels``; indices are positions in ``labels``."""
    if cfg.partition == "iid":
        return iid(len(labels), cfg.num_devices, rng, quantity_skew=cfg.quantity_skew)
    if cfg.partition == "dirichlet":
        return dirichlet(
            labels, cfg.num_devices, cfg.skew, rng, quantity_skew=cfg.quantity_skew
        )
    if cfg.partition == "shards":
        return shards(labels, cfg.num_devices, int(cfg.skew), rng)
    if natural is None:
        raise ValueError(
            "partition='natural' needs a dataset with a natural split (synthetic)"
        )
    if len(natural) != cfg.num_devices:
        raise ValueError(
            f"num_devices must be {len(natural)} for this dataset's natural split, "
            f"got {cfg.num_devices}"
        )
    return natural


def label_counts(
    labels: np.ndarray, partitions: list[np.ndarray], num_classes: int
) -> np.ndarray:
    """Counts of each class on each device, shape (num_devices, num_classes)."""
    return np.stack([np.bincount(labels[p], minlength=num_classes) for p in partitions])
