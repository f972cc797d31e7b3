"""Split training indices into a shared dataset and one partition per device.

Every function maps labels to index arrays: each training sample goes to exactly
one device or to the shared dataset, and every device gets at least ``min_size``
samples (``FedConfig.min_device_size``), or a ``ValueError`` says why it cannot.
Label skew: the Dirichlet split of each class over the devices of Yurochkin et al.
2019 (https://arxiv.org/abs/1905.12022), as flwr-datasets' ``DirichletPartitioner``
draws it, and the shards of McMahan et al. 2017 (https://arxiv.org/abs/1602.05629).
"""

from __future__ import annotations

import numpy as np

from .config import FedConfig

#: Dirichlet draws tried before giving up on ``min_size`` (flwr-datasets tries 11).
#: A draw costs about 3 ms on digits; at skew 0.1 and 50 devices about one in 13
#: meets a minimum of 2, so 100 fail together with probability below 1e-3.
MAX_DRAWS = 100


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
    shared dataset) get equal shares, as far as each class has samples. Classes that
    hold fewer samples than asked for are a ``ValueError``.
    """
    allowed = np.arange(num_classes) if classes is None else np.asarray(classes)
    if allowed.max() >= num_classes:
        raise ValueError(
            f"shared_classes must name classes in [0, {num_classes - 1}], got {classes}"
        )
    total = round(fraction * len(labels))
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in allowed]
    available = np.array([len(p) for p in pools])
    if available.sum() < total:
        raise ValueError(
            f"shared_classes={tuple(int(c) for c in allowed)} hold "
            f"{int(available.sum())} training samples, fewer than the {total} that "
            f"shared_fraction={fraction:g} asks for: lower shared_fraction to at most "
            f"{available.sum() / len(labels):.4f} or name more classes"
        )
    quota = _balanced_quota(total, available)
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
    min_size: int = 1,
) -> list[np.ndarray]:
    """Shuffle, then cut into ``num_devices`` parts.

    Without quantity skew the sizes differ by at most one; with it, sizes follow
    ``lognormal(0, quantity_skew)`` weights (each device keeps at least ``min_size``
    samples).
    """
    _check_enough(num_samples, num_devices, min_size)
    order = rng.permutation(num_samples)
    sizes = _device_sizes(num_samples, num_devices, rng, quantity_skew, min_size)
    return [np.sort(part) for part in np.split(order, np.cumsum(sizes)[:-1])]


def _device_sizes(
    num_samples: int,
    num_devices: int,
    rng: np.random.Generator,
    sigma: float,
    min_size: int,
) -> np.ndarray:
    if sigma == 0:
        base, extra = divmod(num_samples, num_devices)
        return np.array([base + (i < extra) for i in range(num_devices)])
    weights = rng.lognormal(0.0, sigma, num_devices)
    # min_size each first, the rest in proportion to the weights (largest remainder).
    spare = num_samples - num_devices * min_size
    raw = spare * weights / weights.sum()
    sizes = np.floor(raw).astype(int)
    sizes[np.argsort(raw - sizes)[::-1][: spare - sizes.sum()]] += 1
    return sizes + min_size


def dirichlet(
    labels: np.ndarray,
    num_devices: int,
    alpha: float,
    rng: np.random.Generator,
    *,
    quantity_skew: float = 0.0,
    min_size: int = 1,
) -> list[np.ndarray]:
    """Label skew: each class spreads over the devices in ``Dirichlet(alpha)`` shares.

    Smaller ``alpha`` means more skew. As in flwr-datasets' ``DirichletPartitioner``,
    a draw that leaves a device with fewer than ``min_size`` samples is redrawn from
    the same generator, at most :data:`MAX_DRAWS` times; then ``ValueError``. With
    ``quantity_skew`` each device's shares are scaled by a ``lognormal(0,
    quantity_skew)`` weight, drawn afresh with each draw.
    """
    _check_enough(len(labels), num_devices, min_size)
    smallest = 0  # the best draw's smallest device, for the error
    for _ in range(MAX_DRAWS):
        devices = _dirichlet_draw(labels, num_devices, alpha, rng, quantity_skew)
        least = min(len(d) for d in devices)
        if least >= min_size:
            return [np.sort(d).astype(np.int64) for d in devices]
        smallest = max(smallest, least)
    skewed = f" and quantity_skew={quantity_skew:g}" if quantity_skew > 0 else ""
    raise ValueError(
        f"min_device_size={min_size} cannot be met: in {MAX_DRAWS} Dirichlet draws "
        f"at skew={alpha:g}{skewed}, the smallest of {num_devices} devices got at most "
        f"{smallest} of {len(labels)} samples. Raise skew, lower num_devices, "
        f"quantity_skew or min_device_size"
    )


def _dirichlet_draw(
    labels: np.ndarray,
    num_devices: int,
    alpha: float,
    rng: np.random.Generator,
    quantity_skew: float,
) -> list[np.ndarray]:
    """One draw: every class cut into ``Dirichlet(alpha)`` shares over the devices."""
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
    return [np.concatenate(p) for p in parts]


def shards(
    labels: np.ndarray,
    num_devices: int,
    shards_per_device: int,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """McMahan et al.'s pathological split: sort by label, cut into
    ``num_devices * shards_per_device`` shards, and give each device
    ``shards_per_device`` random shards.

    A shard is mostly one class, but two shards may hold the same class and one may
    straddle two classes: a device sees about ``shards_per_device`` classes, not
    exactly that many.
    """
    num_shards = num_devices * shards_per_device
    if num_shards > len(labels):
        raise ValueError(
            f"shards needs num_devices * skew <= {len(labels)} training samples, "
            f"got {num_devices} * {shards_per_device} = {num_shards}"
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


def _check_enough(num_samples: int, num_devices: int, min_size: int = 1) -> None:
    if num_devices > num_samples:
        raise ValueError(
            f"num_devices must be at most the {num_samples} training samples left for "
            f"devices, got {num_devices}"
        )
    if num_devices * min_size > num_samples:
        raise ValueError(
            f"min_device_size={min_size} for {num_devices} devices needs "
            f"{num_devices * min_size} training samples, but {num_samples} are left "
            f"for devices: lower min_device_size to at most "
            f"{num_samples // num_devices} or num_devices"
        )


def partition_devices(
    labels: np.ndarray,
    cfg: FedConfig,
    rng: np.random.Generator,
    natural: list[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Apply ``cfg.partition`` to ``labels``; indices are positions in ``labels``.

    Every device gets at least ``cfg.min_device_size`` samples, or ``ValueError``.
    """
    parts = _split(labels, cfg, rng, natural)
    smallest = min(len(p) for p in parts)
    if smallest < cfg.min_device_size:
        raise ValueError(
            f"min_device_size={cfg.min_device_size} is not met: "
            f"partition={cfg.partition!r} gives a device {smallest} samples. Lower "
            f"num_devices or min_device_size"
        )
    return parts


def _split(
    labels: np.ndarray,
    cfg: FedConfig,
    rng: np.random.Generator,
    natural: list[np.ndarray] | None,
) -> list[np.ndarray]:
    size = cfg.min_device_size
    if cfg.partition == "iid":
        skew = cfg.quantity_skew
        return iid(len(labels), cfg.num_devices, rng, quantity_skew=skew, min_size=size)
    if cfg.partition == "dirichlet":
        return dirichlet(
            labels,
            cfg.num_devices,
            cfg.skew,
            rng,
            quantity_skew=cfg.quantity_skew,
            min_size=size,
        )
    if cfg.partition == "shards":
        num_classes = len(np.unique(labels))
        if cfg.skew > num_classes:
            raise ValueError(
                f"skew must be at most the {num_classes} classes of the devices' data "
                f"for partition='shards' (skew = shards per device), got {cfg.skew:g}"
            )
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
