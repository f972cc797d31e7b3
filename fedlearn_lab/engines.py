"""Two interchangeable ways to compute a round; ``FedConfig.engine`` picks one.

``"reference"`` is the plain loop (:mod:`fedlearn_lab.reference`): one device, one
SGD step, one model at a time. ``"vectorized"`` computes the same numbers for all
sampled devices at once (:mod:`fedlearn_lab.vectorized`); tests hold both together.
A round looks its engine up once (``Setup.engine``) and calls its three parts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import reference, vectorized


@dataclass(frozen=True)
class Engine:
    """The computing parts of a round, with the signatures of the reference engine."""

    train_devices: Callable  # like reference.train_each: stacked weights, mean losses
    sgd: Callable  # like reference.sgd, for the server's own training
    evaluate: Callable  # like reference.evaluate_each


ENGINES: dict[str, Engine] = {
    "reference": Engine(reference.train_each, reference.sgd, reference.evaluate_each),
    "vectorized": Engine(vectorized.train_devices, vectorized.sgd, vectorized.evaluate),
}
