"""Aggregation: from the devices' returned weights to one aggregation model."""

from __future__ import annotations

from collections.abc import Sequence

from .weights import Weights, weighted_mean


def fedavg(updates: Sequence[tuple[Weights, int]]) -> Weights:
    """FedAvg (McMahan et al. 2017): the average of the devices' weights, each
    weighted by its number of training samples."""
    if not updates:
        raise ValueError("fedavg needs at least one (weights, num_examples) pair")
    return weighted_mean([w for w, _ in updates], [n for _, n in updates])
