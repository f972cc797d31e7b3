"""The method on Flower (https://flower.ai), the field's engine: on its Simulation
Engine, or as real processes (a SuperLink and SuperNodes) on this machine.

Needs the extra, ``pip install "fedlearn_lab[flower]"``; the core never imports this
package. A Flower run is the core's round with Flower carrying the messages: the
strategy's server calls :func:`fedlearn_lab.rounds.plan_round` and
:func:`fedlearn_lab.rounds.finish_round`, and each device's ClientApp calls
:func:`fedlearn_lab.rounds.train_device`, the very functions of the in-process loop.
So faults (dropout, deadline: a lost device is never asked) and attacks (a malicious
device corrupts its own update, in its ClientApp) behave as in-process.

A run gives the ``History`` of :func:`fedlearn_lab.run` with ``engine="reference"``
for the same config (the vectorized engine agrees to about 1e-6):

- Flower samples nodes with Python's unseeded ``random``, and node ids change from run
  to run. Here device ``k`` is the node started with ``partition-id=k`` (each node is
  asked once, at the start), and the strategy samples devices with the core's seeded
  round plan.
- Every asked device gets the same message: the global weights, the config and the
  round's index. It derives the round's plan from the seed, as the server does, and
  redraws the in-process loop's minibatch orders for all returned devices
  (:func:`fedlearn_lab.reference.batch_orders`), keeping its own row. It can, because
  every node derives every partition from the seed (a lab's shortcut: real devices
  would each use their own stream and know only their own data).
- Replies are stacked in device order, so float sums do not depend on arrival order.
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
]
