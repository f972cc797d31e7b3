"""The methods by name: FedAvg, fixed steps, FedDU, Hybrid-FL, data sharing.

How each uses the shared dataset is the table in :mod:`fedlearn_lab.server`
(``FedConfig.shared_use``). :data:`METHODS` names the five methods compared in the
FedDUAP paper as field changes, so ``cfg.replace(**fl.METHODS["feddu"])`` turns any
config into FedDU.
Every method splits the data the same way for the same seed, so they differ only in
how the shared dataset is used.
"""

from __future__ import annotations

from typing import Any

from .config import FedConfig

METHODS: dict[str, dict[str, Any]] = {
    "fedavg": {"shared_use": "adjust", "server_schedule": "fixed", "server_steps": 0},
    "fixed": {"shared_use": "adjust", "server_schedule": "fixed"},
    "feddu": {"shared_use": "adjust", "server_schedule": "feddu"},
    "hybrid": {"shared_use": "hybrid", "server_schedule": "fixed"},
    "data_sharing": {"shared_use": "data_sharing", "server_schedule": "fixed"},
}


def method_of(cfg: FedConfig) -> str:
    """The :data:`METHODS` name that describes ``cfg``."""
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
    if cfg.malicious_fraction == 0:
        reason = "malicious_fraction=0: no device attacks"
        why.update(dict.fromkeys(("attack", "attack_strength"), reason))
    if cfg.partition in ("iid", "natural"):
        why["skew"] = f"partition={cfg.partition!r} has no label skew to set"
    return why
