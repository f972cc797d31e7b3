"""SCAFFOLD: control variates that correct every local step for the device's drift.

Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning", ICML 2020, Algorithm 1 with option II (https://arxiv.org/abs/1910.06378).
The server keeps a control ``c``, every device ``i`` its own ``c_i``; all start at
zero and a device that is not sampled keeps its ``c_i``. A sampled device starts
from the global weights ``x`` and takes its ``K`` steps with the gradient corrected
by ``c - c_i`` (``reference.sgd(..., correction=c - c_i)``)::

    y_i <- y_i - lr (g_i(y_i) + c - c_i)
    c_i+ = c_i - c + (x - y_i) / (K lr)              device_control
    x   <- x + mean(y_i - x)                         global step 1: the plain mean
    c   <- c + (|S| / N) mean(c_i+ - c_i)            server_control

so ``c`` stays the mean of all ``N`` devices' ``c_i``. ``K`` is the device's own number
of steps (``epochs * ceil(n_i / batch_size)``); the paper has all devices take ``K``.

With one device, always sampled, ``c = c_1`` after every round (``c_1+ - c_1`` is
added to ``c = c_1``), so the correction is zero, up to rounding, and SCAFFOLD is
FedAvg.

Composing with FedAvg (for the round to decide): the paper averages ``y_i - x``
with equal weights, FedAvg weights them by the devices' examples. The plain mean
is the paper's option and gives an exact oracle; ``server_control`` always takes
the plain mean of the ``c_i+ - c_i``, which keeps ``c`` the mean of the ``c_i``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch

from .weights import Weights


def initial_controls(weights: Weights, num_devices: int) -> tuple[Weights, Weights]:
    """Zero controls shaped like ``weights``: the server's ``c`` and every device's
    ``c_i``, stacked along a leading device axis (``num_devices``, ...)."""
    if isinstance(num_devices, bool) or not isinstance(num_devices, int):
        raise ValueError(f"num_devices must be an integer >= 1, got {num_devices!r}")
    if num_devices < 1:
        raise ValueError(f"num_devices must be an integer >= 1, got {num_devices!r}")
    c = {k: torch.zeros_like(v) for k, v in weights.items()}
    return c, {k: v.new_zeros(num_devices, *v.shape) for k, v in weights.items()}


def corrections(c: Weights, controls: Weights, device_ids: Sequence[int]) -> Weights:
    """``c - c_i`` of the devices ``device_ids``, stacked in that order: the term
    their local steps add to the gradient."""
    index = torch.as_tensor(device_ids, dtype=torch.long)
    return {k: c[k] - v[index] for k, v in controls.items()}


def device_control(
    c_i: Weights,
    c: Weights,
    x: Weights,
    y_i: Weights,
    *,
    num_steps: int | Sequence[int],
    lr: float,
) -> Weights:
    """Option II: ``c_i+ = c_i - c + (x - y_i) / (K lr)`` with ``K = num_steps``.

    With a sequence of step counts, ``c_i`` and ``y_i`` are stacked along a leading
    device axis (one row per count); ``c`` and ``x`` are shared.
    """
    single = isinstance(num_steps, numbers.Integral)
    steps = _checked_steps(num_steps, lr)
    if single:
        return {k: c_i[k] - c[k] + (x[k] - y_i[k]) / (num_steps * lr) for k in c_i}
    span = torch.tensor([k * lr for k in steps], dtype=torch.float64)  # (devices,)
    out = {}
    for k, v in c_i.items():
        per_device = span.to(v.dtype).view(-1, *[1] * (v.dim() - 1))
        out[k] = v - c[k] + (x[k] - y_i[k]) / per_device
    return out


def _checked_steps(num_steps: int | Sequence[int], lr: float) -> list[int]:
    """``num_steps`` as a list, after refusing what option II cannot divide by."""
    single = isinstance(num_steps, numbers.Integral)
    steps = [num_steps] if single else list(num_steps)
    if not steps or any(
        isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1
        for k in steps
    ):
        raise ValueError(f"num_steps must be integers >= 1, got {num_steps!r}")
    if not lr > 0:
        raise ValueError(f"lr must be a number > 0, got {lr!r}")
    return steps


def update_controls(
    controls: tuple[Weights, Weights],
    x: Weights,
    y_i: Weights,
    device_ids: Sequence[int],
    *,
    num_steps: Sequence[int],
    lr: float,
) -> tuple[Weights, Weights]:
    """A round's option II update in one pass: the devices ``device_ids`` returned
    ``y_i`` (stacked in that order) after ``num_steps`` steps each; returns the new
    ``(c, every c_i)``. The same as :func:`device_control`, then
    :func:`server_control` and :func:`store_controls`, up to rounding, in fewer
    operations: ``c_i+ - c_i = (x - y_i) / (K lr) - c`` needs no ``c_i``."""
    c, c_all = controls
    span = torch.tensor([k * lr for k in _checked_steps(num_steps, lr)])  # (devices,)
    if len(span) != len(device_ids):
        raise ValueError(
            f"num_steps must hold one count per device ({len(device_ids)}), "
            f"got {len(span)}"
        )
    index = torch.as_tensor(device_ids, dtype=torch.long)
    share = len(device_ids) / next(iter(c_all.values())).shape[0]  # |S| / N
    new_c, new_all = {}, {}
    for k, v in c_all.items():
        delta = (x[k] - y_i[k]) / span.view(-1, *[1] * (v.dim() - 1)) - c[k]
        new_c[k] = c[k] + delta.mean(0) * share
        new_all[k] = v.index_add(0, index, delta)
    return new_c, new_all


def server_control(c: Weights, delta_cs: Weights, num_devices: int) -> Weights:
    """``c + (|S| / N) mean(delta_c_i)`` over the ``|S|`` devices that returned
    ``delta_c_i = c_i+ - c_i`` (stacked along a leading device axis); ``c`` if none
    did."""
    returned = next(iter(delta_cs.values())).shape[0] if delta_cs else 0
    if isinstance(num_devices, bool) or not isinstance(num_devices, int):
        raise ValueError(f"num_devices must be an integer >= 1, got {num_devices!r}")
    if not 1 <= num_devices or returned > num_devices:
        raise ValueError(
            f"num_devices must be an integer >= {max(1, returned)} (the devices "
            f"that returned), got {num_devices!r}"
        )
    if returned == 0:
        return dict(c)
    share = returned / num_devices
    return {k: c[k] + delta_cs[k].mean(0) * share for k in c}


def store_controls(
    controls: Weights, device_ids: Sequence[int], new: Weights
) -> Weights:
    """Every device's ``c_i``, stacked, with the rows ``device_ids`` replaced by
    ``new`` (stacked in that order); the other devices keep theirs. A copy."""
    index = torch.as_tensor(device_ids, dtype=torch.long)
    if len(device_ids) == 0:
        return {k: v.clone() for k, v in controls.items()}
    return {k: v.index_copy(0, index, new[k]) for k, v in controls.items()}
