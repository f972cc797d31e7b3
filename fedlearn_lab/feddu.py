"""FedDU, the dynamic server update: how far to trust the shared dataset each round.

FedDUAP (Zhang, Liu et al., IJCAI 2022, https://arxiv.org/abs/2204.11536; journal
version FedDUMAP, https://arxiv.org/abs/2408.05678) weighs the server's update on the
shared dataset by

    alpha_t = (1 - acc_t) * n0 D(P't) / (n0 D(P't) + n't D(P0)) * decay^(t-1)

and turns it into a number of server steps

    tau_t = floor(alpha_t * n't E / (m B)),  capped at ceil(n0 / B_server) E,

where D is the label divergence (Jensen-Shannon) from P, the label distribution of all
device data; P0 is the shared dataset's label distribution and P't that of the data
on this round's m sampled devices (n't samples); acc_t is the aggregation model's
accuracy on the shared dataset; E and B are the devices' local epochs and batch size, so
``n't E / (m B)`` is the average number of local steps per device. The server thus
does more when the devices' data is far from P, when the shared dataset is close to
it and large, and when the model still errs on the shared dataset; ``decay`` fades
the server's part out as training goes on.

Two published readings use these numbers (``FedConfig.feddu_mode``):

- ``"steps"`` (the papers): run ``tau_t`` server SGD steps on the shared dataset.
- ``"interpolate"`` (the authors' released code): train the full cap (E epochs) on
  the shared dataset, then keep only ``alpha_t`` of that move,
  ``w = w_agg + alpha_t (w_server - w_agg)``; skipped when ``alpha_t <= 0.001``.

Choices made here (each documented where it lives): label frequencies are exact,
not rounded to 3 decimals as in the released code (``decimals=3`` reproduces it);
the decay exponent counts the rounds finished before this one (0 in round 1), as
the released code's loop index does; 0/0 in alpha (both label divergences zero) is 0.
Not reproduced: the released code's learning-rate decay (0.99 per round) and its
guards (rolling back a server update whose loss triples, dropping device updates
whose loss triples).
"""

from __future__ import annotations

import math

import numpy as np

# The released code skips the interpolated server update below this alpha.
MIN_ALPHA = 1e-3


def label_distribution(
    labels: np.ndarray, num_classes: int, *, decimals: int | None = None
) -> np.ndarray:
    """Frequency of each class in ``labels``, shape (num_classes,); zeros if empty.

    ``decimals=3`` rounds as the released FedDU code does (the result may then not
    sum exactly to 1); the default keeps exact frequencies.
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    if counts.sum() == 0:
        return np.zeros(num_classes)
    freq = counts / counts.sum()
    return freq if decimals is None else np.round(freq, decimals)


def _kl2(p: np.ndarray, q: np.ndarray) -> float:
    # Base-2 KL divergence over the entries where p > 0 (0 log 0 = 0). Here q is the
    # mixture, q >= p / 2, so q > 0 there too unless p / 2 underflows to 0.
    keep = (p > 0) & (q > 0)
    return float(np.sum(p[keep] * np.log2(p[keep] / q[keep])))


def label_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Label divergence: the Jensen-Shannon divergence of two label distributions, in
    bits: 0 (equal) to 1 (apart). (Not to be confused with a run that diverges, the
    NaN blow-up of :class:`fedlearn_lab.DivergedError`.)

    ``JS(p, q) = KL(p || m) / 2 + KL(q || m) / 2`` with ``m = (p + q) / 2``; entries
    where a distribution is zero add nothing.
    """
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p.shape != q.shape:
        raise ValueError(
            f"p and q must have the same shape, got {p.shape} and {q.shape}"
        )
    m = (p + q) / 2
    return _kl2(p, m) / 2 + _kl2(q, m) / 2


def alpha_t(
    shared_accuracy: float,
    *,
    num_shared: int,
    num_sampled_samples: int,
    shared_label_divergence: float,
    sampled_label_divergence: float,
    decay: float,
    round_idx: int,
) -> float:
    """FedDU's weight of the server update in round ``round_idx`` (1-based), in [0, 1].

    Parameters
    ----------
    shared_accuracy
        acc_t: the aggregation model's accuracy on the shared dataset.
    num_shared, num_sampled_samples
        n0 and n't: samples in the shared dataset and on the sampled devices.
    shared_label_divergence, sampled_label_divergence
        D(P0) and D(P't): label divergence of the shared and the sampled data from P.
    decay, round_idx
        The factor ``decay ** (round_idx - 1)``.
    """
    if round_idx < 1:
        raise ValueError(f"round_idx must be an integer >= 1, got {round_idx!r}")
    shared_part = num_shared * sampled_label_divergence
    total = shared_part + num_sampled_samples * shared_label_divergence
    balance = shared_part / total if total > 0 else 0.0
    return (1 - shared_accuracy) * balance * decay ** (round_idx - 1)


def tau_cap(num_shared: int, *, local_epochs: int, server_batch_size: int) -> int:
    """FedDU's most server steps: ``local_epochs`` epochs over the shared dataset."""
    return math.ceil(num_shared / server_batch_size) * local_epochs


def tau_t(
    alpha: float,
    *,
    num_sampled_samples: int,
    num_sampled: int,
    local_epochs: int,
    batch_size: int,
    cap: int,
) -> int:
    """FedDU's server steps: ``alpha`` times the devices' average local steps, floored,
    at least 0 and at most ``cap`` (see :func:`tau_cap`)."""
    average_local_steps = (
        num_sampled_samples * local_epochs / (num_sampled * batch_size)
    )
    return min(cap, max(0, math.floor(alpha * average_local_steps)))
