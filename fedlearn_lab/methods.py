"""The methods by name: FedAvg, the uses of the shared dataset, the other remedies.

:data:`METHODS` names each method as the ``FedConfig`` field changes that make it,
so ``cfg.replace(**fl.METHODS["feddu"])`` turns any config into FedDU:

- ``fedavg``: plain FedAvg (McMahan et al. 2017, https://arxiv.org/abs/1602.05629).
- The five ways of using the shared dataset compared in the FedDUAP paper (how each
  works is the table in :mod:`fedlearn_lab.state`): ``fixed`` (the server
  adjustment, ``server_steps`` SGD steps after aggregation), ``feddu``, ``hybrid``,
  ``data_sharing``.
- The field's other non-IID remedies, alone: ``fedprox`` (Li et al., MLSys 2020),
  ``scaffold`` (Karimireddy et al., ICML 2020), ``fedadam``, ``fedyogi`` and
  ``fedadagrad`` (Reddi et al., ICLR 2021).
- A few combinations with the server adjustment: ``fedprox+fixed``,
  ``scaffold+fixed``, ``fedadam+fixed``.

Every entry sets all the fields that say which method runs (the use of the shared
dataset, ``server_momentum``, ``proximal_mu``, ``scaffold``, ``server_opt``), those it
does not use to off, so the result is that method and nothing else, whatever config
it is applied to. The rest of the config stays, including the ``server_steps`` that
``fixed`` takes (so they must be above 0 for it).

A remedy's entry also sets its hyperparameters, chosen on :func:`load_digits` with
the default config and ``server_steps=0``: mean test accuracy over the last 5 of 30
rounds, 2 seeds, at Dirichlet 0.1 / 0.5 (FedAvg: 0.879 / 0.915):

- FedProx: ``proximal_mu`` 0.001, 0.01, 0.1 gave 0.874-0.879 / 0.913-0.915 and 1.0
  gave 0.791 / 0.888: it never beat FedAvg; 0.01 is the paper's usual value.
- FedAdam, ``server_opt_lr`` 0.01 / 0.03 / 0.1: 0.846 / 0.901, 0.915 / 0.939,
  0.917 / 0.932; FedYogi: 0.891 / 0.924, 0.913 / 0.942, 0.894 / 0.930. Both take 0.03.
- FedAdagrad, ``server_opt_beta1=0`` (Flower's FedAdagrad), lr 0.03 / 0.1 / 0.3:
  0.902 / 0.918, 0.923 / 0.945, 0.913 / 0.938; with beta1 0.9 lr 0.3 ties lr 0.1
  (0.929 / 0.946), and lr 0.03 lags (0.809 / 0.867). It takes 0.1 and beta1 0.

To try another value, change it after:
``cfg.replace(**fl.METHODS["fedprox"]).replace(proximal_mu=0.1)``.

Every method splits the data the same way for the same seed, so two methods differ
only in what they do with it. :func:`method_of` names any config, combinations
included.
"""

from __future__ import annotations

from typing import Any

from .config import FedConfig

# The fields that say which method runs, all off: no remedy, no server optimiser.
_OFF: dict[str, Any] = {
    "server_momentum": "none",
    "proximal_mu": 0.0,
    "scaffold": False,
    "server_opt": "none",
}
# How the shared dataset is used (the FedDUAP paper's five methods).
_SHARED_USES: dict[str, dict[str, Any]] = {
    "fedavg": {"shared_use": "adjust", "server_schedule": "fixed", "server_steps": 0},
    "fixed": {"shared_use": "adjust", "server_schedule": "fixed"},
    "feddu": {"shared_use": "adjust", "server_schedule": "feddu"},
    "hybrid": {"shared_use": "hybrid", "server_schedule": "fixed"},
    "data_sharing": {"shared_use": "data_sharing", "server_schedule": "fixed"},
}
_ADAPTIVE = {"server_opt_beta1": 0.9, "server_opt_beta2": 0.99, "server_opt_tau": 1e-3}
# The other remedies, each with its hyperparameters for the bundled digits.
_REMEDIES: dict[str, dict[str, Any]] = {
    "fedprox": {"proximal_mu": 0.01},
    "scaffold": {"scaffold": True},
    "fedadam": {"server_opt": "adam", "server_opt_lr": 0.03, **_ADAPTIVE},
    "fedyogi": {"server_opt": "yogi", "server_opt_lr": 0.03, **_ADAPTIVE},
    "fedadagrad": {
        "server_opt": "adagrad",
        "server_opt_lr": 0.1,
        **_ADAPTIVE,
        "server_opt_beta1": 0.0,  # no momentum, as Flower's FedAdagrad
    },
}
COMBINED = ("fedprox", "scaffold", "fedadam")  # each also with the server adjustment

METHODS: dict[str, dict[str, Any]] = {
    **{name: {**use, **_OFF} for name, use in _SHARED_USES.items()},
    **{name: {**_SHARED_USES["fedavg"], **_OFF, **r} for name, r in _REMEDIES.items()},
    **{
        f"{name}+fixed": {**_SHARED_USES["fixed"], **_OFF, **_REMEDIES[name]}
        for name in COMBINED
    },
}


def method_of(cfg: FedConfig) -> str:
    """The name of the method ``cfg`` runs: its parts joined by ``+``.

    The parts, in this order: the device side (``fedprox``, ``scaffold``), the
    server's optimiser (``fedadam``, ``fedyogi``, ``fedadagrad``, or the momentum
    ``fedavgm`` or ``feddum``), then the use of the shared dataset (``fixed``,
    ``feddu``, ``hybrid``, ``data_sharing``). A config with no part is ``fedavg``.
    So FedProx with the server adjustment is ``"fedprox+fixed"`` and FedDUM is
    ``"feddum+feddu"``; every :data:`METHODS` entry is named by its key.
    """
    parts = []
    if cfg.proximal_mu > 0:
        parts.append("fedprox")
    if cfg.scaffold:
        parts.append("scaffold")
    if cfg.server_opt != "none":
        parts.append(f"fed{cfg.server_opt}")
    if cfg.server_momentum != "none":
        parts.append(cfg.server_momentum)
    use = _shared_use_of(cfg)
    if use != "fedavg" or not parts:
        parts.append(use)
    return "+".join(parts)


def _shared_use_of(cfg: FedConfig) -> str:
    """Which of the five uses of the shared dataset ``cfg`` makes."""
    if cfg.shared_use != "adjust":
        return cfg.shared_use
    if cfg.server_schedule == "feddu":
        return "feddu"
    return "fixed" if cfg.server_steps > 0 else "fedavg"


def inactive_settings(cfg: FedConfig) -> dict[str, str]:
    """The fields that have no effect under ``cfg``, each with the reason why.

    The playground disables these controls and shows the reason as their tooltip.
    """
    why: dict[str, str] = {}
    server = ("server_schedule", "server_steps", "server_lr", "server_batch_size")
    feddu = ("feddu_mode", "server_decay")
    if cfg.shared_use != "adjust":
        reason = f"shared_use={cfg.shared_use!r} has no server adjustment"
        why.update(dict.fromkeys(server + feddu, reason))
    elif cfg.server_schedule == "feddu":
        why["server_steps"] = "FedDU sets the server steps each round"
    else:
        why.update(dict.fromkeys(feddu, "only FedDU (server_schedule='feddu') uses it"))
        if cfg.server_steps == 0:
            reason = "server_steps=0: no server adjustment (plain FedAvg)"
            why.update(dict.fromkeys(server[2:], reason))
    if cfg.shared_fraction == 0:
        reason = "shared_fraction=0: there is no shared dataset"
        why.update(dict.fromkeys(("shared_use", "shared_classes"), reason))
    if cfg.server_momentum == "none":
        why["momentum_beta"] = "server_momentum='none'"
    why.update(_inactive_server_opt(cfg))
    if cfg.malicious_fraction == 0:
        reason = "malicious_fraction=0: no device attacks"
        why.update(dict.fromkeys(("attack", "attack_strength"), reason))
    if cfg.partition in ("iid", "natural"):
        why["skew"] = f"partition={cfg.partition!r} has no label skew to set"
    return why


def _inactive_server_opt(cfg: FedConfig) -> dict[str, str]:
    """The ``server_opt_*`` fields the server's optimiser does not read."""
    if cfg.server_opt == "none":
        names = ("server_opt_lr", "server_opt_beta1", "server_opt_beta2")
        reason = "server_opt='none': no adaptive server optimiser"
        return dict.fromkeys((*names, "server_opt_tau"), reason)
    if cfg.server_opt == "adagrad":  # v <- v + delta^2: no decay of v
        return {"server_opt_beta2": "server_opt='adagrad' sums delta^2 (no beta2)"}
    return {}
