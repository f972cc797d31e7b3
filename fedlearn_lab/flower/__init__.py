"""The method on Flower (https://flower.ai), the field's engine: on its Simulation
Engine, or as real processes (a SuperLink and SuperNodes) on this machine.

Needs the extra, ``pip install "fedlearn_lab[flower]"``; the core never imports this
package. The server is Flower's ``FedAvg`` followed by
:func:`fedlearn_lab.rounds.finish_round`, the very function the in-process loop calls
after FedAvg (server adjustment on the shared dataset, evaluation, ``RoundRecord``):
one implementation of the method. Devices train with :func:`fedlearn_lab.local.sgd`.

A run gives the ``History`` of :func:`fedlearn_lab.run` for the same config, up to
float rounding in Flower's aggregation:

- Flower samples nodes with Python's unseeded ``random``, and node ids change from run
  to run. Here device ``k`` is the node started with ``partition-id=k`` (each node is
  asked once, at the start), and the strategy samples devices with the core's seeded
  :func:`fedlearn_lab.sampling.sample_devices`.
- Every sampled device gets the same message: the global weights, the config and the
  round's sampled ids. The in-process loop draws all sampled devices' minibatch orders
  in one call (:func:`fedlearn_lab.local.batch_orders`); a device redraws that call and
  keeps its own row. It can, because every node derives every partition from the seed
  (a lab's shortcut: real devices would each use their own stream and know only their
  own data).
- Replies are aggregated in device order, so float sums do not depend on arrival order.
"""

import os

# Read when flwr and ray are imported: no usage reports from a teaching lab, and no
# Ray warning about accelerators it is told not to use.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

from .apps import (  # noqa: E402
    ServerAdjustFedAvg,
    client_app,
    config_from_run_config,
    load_history,
    save_history,
    server_app,
    train_device,
)
from .processes import run_processes  # noqa: E402
from .simulation import run_simulation, run_simulations  # noqa: E402

__all__ = [
    "ServerAdjustFedAvg",
    "client_app",
    "config_from_run_config",
    "load_history",
    "run_processes",
    "run_simulation",
    "run_simulations",
    "save_history",
    "server_app",
    "train_device",
]
