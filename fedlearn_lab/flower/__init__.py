"""The method on Flower (https://flower.ai), the field's engine: on its Simulation
Engine, or as real processes (a SuperLink and SuperNodes).

Needs the extra, ``pip install "fedlearn_lab[flower]"``; the core never imports this
package. A Flower run is the core's round with Flower carrying the messages: the
strategy's server calls :func:`fedlearn_lab.rounds.plan_round` and
:func:`fedlearn_lab.rounds.finish_round`, the very functions of the in-process loop.

Two modes:

- **lab** (the default): every process derives every partition from the seed, and
  each device's ClientApp calls :func:`fedlearn_lab.rounds.train_device`. A run gives
  the ``History`` of :func:`fedlearn_lab.run` with ``engine="reference"`` for the same
  config (the vectorized engine agrees to about 1e-6), simulated faults and attacks
  included. Device ``k`` is the node started with ``partition-id=k``; the strategy
  samples devices with the core's seeded round plan (Flower's own sampling is
  unseeded); replies are stacked in device order, so sums do not depend on arrival.
- **deployment** (:mod:`fedlearn_lab.flower.deploy`): the server holds only the
  model, the shared dataset and a test set, and knows the devices by their replies;
  each device loads only its own data and draws its minibatches from its own stream.
  Runs are secure by default (:mod:`fedlearn_lab.flower.security`: TLS and SuperNode
  authentication); ``--insecure`` is the lab mode's, for one machine only.

In both, a failing device is part of the round: an error reply makes it lost
(``"error"``), no reply within the round's timeout too (``"timeout"``), a reply that
breaks the contract below is rejected with the reason (``"keys"``, ``"shape"``,
``"dtype"``, ``"metrics"``; NaN or Inf weights: ``"non-finite"``), and the round goes
on with the rest, as with in-process faults.

The message contract (:mod:`fedlearn_lab.flower.contract`), which any ClientApp can
keep (``examples/flower_own_client``):

TRAIN message, server to device (``config`` is a ConfigRecord)::

    arrays                 ArrayRecord  the global weights (a torch state dict)
    config  round-idx      int          the round, from 1
            device-id      int          the id the server knows the device by
            local-epochs   int          epochs of local SGD
            local-lr       float        the local learning rate
            batch-size     int          the local batch size
            proximal-mu    float        FedProx's mu (0.0: plain SGD)
            label-counts   bool         whether to send label-counts (FedDU)
            num-classes    int          classes of the task
            input-shape    list[int]    the shape of one sample
            seed           int          the run's seed
            mode           str          "lab" or "deployment"
            dataset        str          the named dataset
            fed-config     str          the whole FedConfig, as JSON
    correction             ArrayRecord  optional: SCAFFOLD's c - c_i, to add to
                                        every gradient step (only under SCAFFOLD)

Its reply (``metrics`` is a MetricRecord)::

    arrays                 ArrayRecord  the device's new weights: the same keys,
                                        shapes and dtypes as the global weights
    metrics num-examples   int > 0      samples it trained on (FedAvg's weight)
            train-loss     float        its mean training loss, finite
            label-counts   list[int]    only when config label-counts is true:
                                        samples per class, num-classes long,
                                        adding up to num-examples

An optional QUERY message at the start asks each node for its id; its reply's
MetricRecord ``device`` holds ``device-id`` (the node config's ``device-id`` or
``partition-id``). Nodes that do not answer take the ids left, in node id order.

A ClientApp that keeps it needs only ``round-idx``, the four training keys and
``label-counts``; the rest is there for fedlearn_lab's own ClientApp.
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
from .deploy import ServerSetup, load_device_file, write_data_files  # noqa: E402
from .processes import FlowerProcesses, run_processes  # noqa: E402
from .security import Keys, make_keys  # noqa: E402
from .simulation import run_simulation, run_simulations  # noqa: E402

__all__ = [
    "FlowerProcesses",
    "Keys",
    "ServerAdjustFedAvg",
    "ServerSetup",
    "client_app",
    "config_from_run_config",
    "load_device_file",
    "load_history",
    "make_keys",
    "run_processes",
    "run_simulation",
    "run_simulations",
    "save_history",
    "server_app",
    "write_data_files",
]
