"""Device faults: which sampled devices return, and which returned updates are kept.

A sampled device is lost when it drops out (probability ``dropout``, drawn afresh each
round) or when it is too slow for the round's ``deadline``. Stragglers are *dropped*,
not asked for partial work: the server closes the round at the deadline and ignores
late arrivals. Time is simulated. A device's local-training time is its number of
samples divided by its speed; speeds are drawn once per device from a lognormal with
sigma ``SPEED_SIGMA``, and times are given in multiples of the median device's, so
``deadline=1`` loses half the devices (on the default digits split, 1.5 loses about a
quarter, 2 a sixth, 3 none).
The slow devices are the same every round, so a deadline biases the model against
their data.

Returned updates are then checked (:func:`validate_update`); a rejected update is left
out of the aggregation and its reason recorded.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .config import FedConfig
from .seeding import numpy_rng
from .weights import Updates, Weights, count, take

SPEED_SIGMA = 0.5
_GROUP_BYTES = 4 << 20  # see _finite_and_norms


def device_times(sizes: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Simulated local-training time of every device, in multiples of the median."""
    speeds = rng.lognormal(0.0, SPEED_SIGMA, len(sizes))
    times = np.asarray(sizes, dtype=float) / speeds
    return times / np.median(times)


def arrivals(
    sampled: np.ndarray, sizes: Sequence[int], cfg: FedConfig, round_idx: int
) -> tuple[np.ndarray, dict[int, str]]:
    """Split the sampled devices into those that return and those lost.

    Returns the returned ids and ``{device_id: "dropout" | "deadline"}`` for the lost
    ones. A device that drops out is reported as such even if it was also too slow.
    """
    lost: dict[int, str] = {}
    if cfg.deadline is not None:
        late = device_times(sizes, numpy_rng(cfg.seed, "speed"))[sampled] > cfg.deadline
        lost.update((int(k), "deadline") for k in sampled[late])
    if cfg.dropout > 0:
        gone = (
            numpy_rng(cfg.seed, "dropout", round_idx).random(len(sampled)) < cfg.dropout
        )
        lost.update((int(k), "dropout") for k in sampled[gone])
    returned = np.array([k for k in sampled if int(k) not in lost], dtype=sampled.dtype)
    return returned, lost


def validate_update(update: object, reference: Weights) -> str | None:
    """Why ``update`` cannot be aggregated with ``reference`` (the global weights), or
    None if it can: ``"keys"``, ``"shape"``, ``"dtype"`` or ``"non-finite"``."""
    reason = _form(update, reference)
    if reason is None and not all(bool(v.isfinite().all()) for v in update.values()):
        return "non-finite"
    return reason


def _form(update: object, reference: Weights) -> str | None:
    """:func:`validate_update` without the finiteness check."""
    if not isinstance(update, dict) or update.keys() != reference.keys():
        return "keys"
    for name, ref in reference.items():
        value = update[name]
        if not isinstance(value, torch.Tensor) or value.shape != ref.shape:
            return "shape"
        if value.dtype != ref.dtype:
            return "dtype"
    return None


def delta_norm(update: Weights, reference: Weights) -> float:
    """Euclidean norm of ``update - reference`` over all parameters."""
    squares = [
        (update[k].double() - reference[k].double()).square().sum() for k in reference
    ]
    return float(torch.stack(squares).sum().sqrt())


def screen_updates(
    updates: Sequence[object] | Updates,
    reference: Weights,
    *,
    max_norm_ratio: float | None,
) -> list[str | None]:
    """One reason per update (None = accepted); ``updates`` may be stacked.

    After the checks of :func:`validate_update`, an update whose delta norm exceeds
    ``max_norm_ratio`` times the median delta norm of the round's well-formed updates
    is rejected as ``"norm"`` (None switches the rule off). The default ratio, 100,
    only catches garbage: honest devices on digits reached 25 times the median under
    heavy quantity skew (``quantity_skew=3``, ``local_lr=0.5``) and under 3 with the
    default config; lower it to catch boosted updates. Never raises on a malformed
    update.
    """
    reasons = _forms(updates, reference)
    formed = [i for i, r in enumerate(reasons) if r is None]
    finite, norms = _finite_and_norms(updates, formed, reference)
    for i, ok in zip(formed, finite, strict=True):
        reasons[i] = None if ok else "non-finite"
    if max_norm_ratio is None:
        return reasons
    norms = {i: n for i, n in zip(formed, norms, strict=True) if reasons[i] is None}
    if not norms:
        return reasons
    limit = max_norm_ratio * float(np.median(list(norms.values())))
    for i, norm in norms.items():
        if not norm <= limit:  # also catches a norm that overflowed to inf
            reasons[i] = "norm"
    return reasons


def _forms(updates: Sequence[object] | Updates, reference: Weights) -> list[str | None]:
    """:func:`_form` of each update (stacked updates share their rows' form)."""
    if not isinstance(updates, dict):
        return [_form(u, reference) for u in updates]
    n = count(updates)
    return [_form({k: v[0] for k, v in updates.items()}, reference)] * n if n else []


def _finite_and_norms(
    updates: Sequence[Weights] | Weights, formed: list[int], reference: Weights
) -> tuple[list[bool], list[float]]:
    """Whether each update ``formed`` lists is finite, and its :func:`delta_norm`.

    Computed for many updates at once (one by one, these checks would cost more than
    the vectorized engine's local training), in groups of a few MiB of float64.
    """
    finite, norms = [], []
    row_bytes = 8 * sum(v.numel() for v in reference.values())
    size = max(1, _GROUP_BYTES // row_bytes)
    for start in range(0, len(formed), size):
        stacked = take(updates, formed[start : start + size])
        sums = [_sum_of_squares(v, reference[k]) for k, v in stacked.items()]
        total = torch.stack(sums).sum(0)
        # A finite sum of squared deltas means finite updates; otherwise look closer
        # (a non-finite update, or squares of finite numbers that overflowed).
        ok = total.isfinite()
        if not ok.all():
            ok = torch.stack([v.isfinite().flatten(1).all(1) for v in stacked.values()])
            ok = ok.all(0)
        finite += ok.tolist()
        norms += total.sqrt().tolist()
    return finite, norms


def _sum_of_squares(rows: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Each row's sum of squared differences from ``reference``, in float64 (as
    :func:`delta_norm` computes it)."""
    delta = rows.to(torch.float64, copy=True).sub_(reference)  # a copy, even of float64
    return delta.square_().flatten(1).sum(1)
