"""Two interchangeable ways to compute a round; ``FedConfig.engine`` picks one.

``"reference"`` is the plain loop: one device, one SGD step, one model at a time.
``"vectorized"`` computes the same thing for all sampled devices at once (see
:mod:`fedlearn_lab.vectorized`); tests check that both agree. The round looks its
engine up here for local training (:func:`fedlearn_lab.local.train_devices`), the
server adjustment's SGD (``methods``) and the evaluation (``rounds.finish_round``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import local, metrics, vectorized


@dataclass(frozen=True)
class Engine:
    """The computing parts of a round, with the signatures of the reference path."""

    train_devices: Callable  # like local.train_each (its weights may come stacked)
    sgd: Callable  # like local.sgd, for the server adjustment
    evaluate: Callable  # like metrics.evaluate_each


ENGINES: dict[str, Engine] = {
    "reference": Engine(local.train_each, local.sgd, metrics.evaluate_each),
    "vectorized": Engine(vectorized.train_devices, vectorized.sgd, vectorized.evaluate),
}
