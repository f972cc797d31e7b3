"""The experiment's settings: one frozen dataclass, validated on construction."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

PARTITIONS = ("iid", "dirichlet", "shards", "natural")
MODELS = ("logreg", "mlp", "cnn")
ATTACKS = ("sign_flip", "scale", "label_flip", "noise")
AGGREGATORS = ("fedavg", "median", "trimmed_mean", "krum")
SHARED_USES = ("adjust", "hybrid", "data_sharing")
SERVER_SCHEDULES = ("fixed", "feddu")
FEDDU_MODES = ("steps", "interpolate")
SERVER_MOMENTUMS = ("none", "feddum", "fedavgm")
SERVER_OPTS = ("none", "adam", "yogi", "adagrad")
ENGINES = ("vectorized", "reference")

#: float32's largest finite value (3.4028234663852886e38). A learning rate above it
#: cannot reach the float32 weights (torch refuses to convert it), so it is refused.
FLOAT32_MAX = (2 - 2**-23) * 2**127
#: The most that sizes may ask for. Each keeps its own memory well inside a 24 GiB
#: machine with the other fields at their defaults: ``num_devices`` (partitions, and
#: one stacked model per sampled device), ``local_epochs`` (one shuffle per device and
#: epoch, 12 bytes per sample: 0.7 GB for 60,000 samples), ``hidden`` (an MLP of 784
#: inputs is 13 MB per model), the batch sizes (padding is allocated per batch slot:
#: a batch larger than a device is its whole data anyway) and ``rounds`` (a record
#: per round).
LIMITS = {
    "num_devices": 10_000,
    "local_epochs": 1_000,
    "batch_size": 100_000,
    "server_steps": 100_000,
    "server_batch_size": 100_000,
    "rounds": 100_000,
    "hidden": 4_096,
}
#: The largest ``quantity_skew``: log-normal weights of sigma 10 stay far from float
#: overflow (about 1e26 at six sigmas); sigma 400 overflowed into empty devices.
MAX_QUANTITY_SKEW = 10.0


@dataclass(frozen=True)
class FedConfig:
    """Every knob of a federated experiment; invalid values raise ``ValueError``.

    The defaults make a good first experiment on :func:`fedlearn_lab.load_digits`:
    50 label-skewed devices (Dirichlet 0.5), 10 of them per round, five local epochs,
    then five server steps on a 5% shared dataset: about 0.94 test accuracy after
    30 rounds, in a second or two. ``hidden`` is the MLP's width (the CNN uses
    ``hidden // 4`` channels).

    Faults and adversaries: a sampled device fails to return with probability
    ``dropout``; with a ``deadline`` (in multiples of the median device's local-training
    time) slower devices are dropped. Returned updates whose change is more than
    ``max_norm_ratio`` times the round's median change are rejected. A fixed
    ``malicious_fraction`` of devices runs ``attack`` (``attack_strength`` sets its
    size), and ``aggregator`` names the rule that combines the updates.

    Other non-IID remedies: ``proximal_mu > 0`` adds FedProx's proximal term
    ``mu/2 ||w - w_global||^2`` to every device's loss; ``scaffold=True`` corrects
    every local step with SCAFFOLD's control variates (option II, global step 1);
    ``server_opt`` feeds the average change to Adam, Yogi or Adagrad on the server
    (rate ``server_opt_lr``, decays ``server_opt_beta1/2``, adaptivity
    ``server_opt_tau``). Refused as meaningless: ``server_opt`` with
    ``server_momentum`` (two server optimisers on one move) and ``scaffold`` with a
    robust ``aggregator`` (the control variates assume the mean). Changing
    ``server_opt_*`` while ``server_opt="none"`` is allowed: those settings are
    inactive, as ``momentum_beta`` is without momentum.

    Every device gets at least ``min_device_size`` samples: Dirichlet draws are
    repeated until they give that (see :func:`fedlearn_lab.partition.dirichlet`),
    and other splits that cannot are refused. Sizes are capped by :data:`LIMITS` and
    the learning rates by :data:`FLOAT32_MAX`. numpy integer and float scalars are
    accepted and stored as Python ``int`` and ``float``.
    """

    num_devices: int = 50
    participation: float = 0.2
    partition: str = "dirichlet"
    skew: float = 0.5
    quantity_skew: float = 0.0
    min_device_size: int = 2
    local_epochs: int = 5
    local_lr: float = 0.1
    batch_size: int = 16
    shared_fraction: float = 0.05
    shared_classes: tuple[int, ...] | None = None
    server_steps: int = 5
    server_lr: float = 0.1
    server_batch_size: int = 32
    rounds: int = 30
    target_accuracy: float | None = None
    model: str = "mlp"
    hidden: int = 64
    seed: int = 0
    # Faults and adversaries (see fedlearn_lab.faults and fedlearn_lab.attacks); the
    # defaults are a federation where every sampled device returns an honest update.
    dropout: float = 0.0
    deadline: float | None = None
    max_norm_ratio: float | None = 100.0
    malicious_fraction: float = 0.0
    attack: str = "sign_flip"
    attack_strength: float = 4.0
    aggregator: str = "fedavg"
    # --- How the shared dataset is used (FedDU and its baselines; see methods.py,
    # feddu.py, momentum.py). server_schedule, server_steps and feddu_* apply only to
    # shared_use="adjust"; fl.METHODS names the usual combinations.
    shared_use: str = "adjust"
    server_schedule: str = "fixed"
    feddu_mode: str = "steps"
    server_decay: float = 0.99
    server_momentum: str = "none"
    momentum_beta: float = 0.9
    # --- The field's other non-IID remedies. Device side (local.py, scaffold.py):
    # FedProx's proximal term (proximal_mu > 0) and SCAFFOLD's control variates.
    # Server side (server_opt.py): an adaptive optimiser fed the average change,
    # FedAdam, FedYogi or FedAdagrad; server_opt_* have no effect with "none".
    # server_opt_lr 0.03 suits FedAdam and FedYogi on digits (FedAdagrad, whose v
    # only grows, wants about 0.1); beta1, beta2 and tau are Flower's FedAdam defaults.
    proximal_mu: float = 0.0
    scaffold: bool = False
    server_opt: str = "none"
    server_opt_lr: float = 0.03
    server_opt_beta1: float = 0.9
    server_opt_beta2: float = 0.99
    server_opt_tau: float = 1e-3
    # --- Simulated cost of a round (see cost.py): compute speeds and bandwidths.
    device_gflops: float = 1.0
    server_gflops: float = 100.0
    device_mbps: float = 50.0
    server_mbps: float = 100.0
    # --- How rounds are computed, not what they compute (see engines.py):
    # "vectorized" trains all sampled devices at once, "reference" is the plain
    # per-device loop it is tested against.
    engine: str = "vectorized"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            # numpy scalars (sweeps over np.arange) become Python ones: JSON-able, and
            # equal configs hash equal.
            object.__setattr__(self, f.name, _plain(getattr(self, f.name)))
        if isinstance(self.shared_classes, list | tuple):
            # Lists arrive from JSON and the CLI; a tuple keeps the config hashable.
            classes = tuple(_plain(c) for c in self.shared_classes)
            object.__setattr__(self, "shared_classes", classes)
        for check in _CHECKS:
            check(self)

    def replace(self, **changes: Any) -> FedConfig:
        """Return a copy with some fields changed (validated like a new config)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as plain JSON-able values."""
        out = dataclasses.asdict(self)
        if self.shared_classes is not None:
            out["shared_classes"] = list(self.shared_classes)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FedConfig:
        """Build a config from :meth:`to_dict` output; unknown keys are an error."""
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"FedConfig has no field(s) {sorted(unknown)}")
        return cls(**values)

    def differences(self, other: FedConfig) -> dict[str, Any]:
        """Fields whose value in ``self`` differs from ``other`` (name -> own value)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        }


def _plain(value: Any) -> Any:
    """A numpy integer, float or string scalar as the Python one; others unchanged."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.str_):
        return str(value)
    return value


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _int_at_least(name: str, low: int):
    high = LIMITS.get(name)
    allowed = (
        f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
    )

    def check(cfg: FedConfig) -> None:
        value = getattr(cfg, name)
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < low
            or (high is not None and value > high)
        ):
            big = high is not None and _real(value) and value > high
            _fail(name, value, allowed + (" (config.LIMITS: memory)" if big else ""))

    return check


def _real(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    # Ints are finite however large; math.isfinite would overflow converting them.
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def _in_range(name: str, low: float, high: float, *, low_open: bool, high_open: bool):
    allowed = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def check(cfg: FedConfig) -> None:
        value = getattr(cfg, name)
        ok = _real(value) and (
            (value > low if low_open else value >= low)
            and (value < high if high_open else value <= high)
        )
        if not ok:
            _fail(name, value, f"a number in {allowed}")

    return check


def _positive(name: str):
    def check(cfg: FedConfig) -> None:
        value = getattr(cfg, name)
        if not (_real(value) and value > 0):
            _fail(name, value, "a number > 0")

    return check


def _non_negative(name: str):
    def check(cfg: FedConfig) -> None:
        value = getattr(cfg, name)
        if not (_real(value) and value >= 0):
            _fail(name, value, "a finite number >= 0 (0 = off)")

    return check


def _learning_rate(name: str):
    def check(cfg: FedConfig) -> None:
        value = getattr(cfg, name)
        if not (_real(value) and 0 < value <= FLOAT32_MAX):
            _fail(
                name,
                value,
                f"a number in (0, {FLOAT32_MAX!r}] (float32's largest value: the "
                "weights are float32)",
            )

    return check


def _choice(name: str, choices: tuple[str, ...]):
    def check(cfg: FedConfig) -> None:
        value = getattr(cfg, name)
        if not isinstance(value, str) or value not in choices:
            _fail(name, value, f"one of {', '.join(map(repr, choices))}")

    return check


def _optional_at_least(name: str, low: float, *, low_open: bool):
    allowed = f"None (off) or a number {'>' if low_open else '>='} {low:g}"

    def check(cfg: FedConfig) -> None:
        value = getattr(cfg, name)
        if value is not None and not (
            _real(value) and (value > low if low_open else value >= low)
        ):
            _fail(name, value, allowed)

    return check


def _check_skew(cfg: FedConfig) -> None:
    if not (_real(cfg.skew) and cfg.skew > 0):
        _fail("skew", cfg.skew, "a number > 0")
    if cfg.partition == "shards" and cfg.skew != int(cfg.skew):
        _fail("skew", cfg.skew, "a whole number of shards per device >= 1 for shards")


def _check_quantity_skew(cfg: FedConfig) -> None:
    if not (_real(cfg.quantity_skew) and 0 <= cfg.quantity_skew <= MAX_QUANTITY_SKEW):
        _fail(
            "quantity_skew",
            cfg.quantity_skew,
            f"a number in [0, {MAX_QUANTITY_SKEW:g}] (0 = off)",
        )
    if cfg.quantity_skew > 0 and cfg.partition in ("shards", "natural"):
        _fail(
            "quantity_skew",
            cfg.quantity_skew,
            f"0 with partition={cfg.partition!r} (device sizes are set by the split)",
        )


def _check_shared_classes(cfg: FedConfig) -> None:
    classes = cfg.shared_classes
    if classes is None:
        return
    if (
        not isinstance(classes, tuple)
        or not classes
        or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in classes)
    ):
        _fail(
            "shared_classes", classes, "None or a non-empty tuple of class labels >= 0"
        )
    if len(set(classes)) != len(classes):
        _fail("shared_classes", classes, "a tuple without repeated classes")


def _check_shared_steps(cfg: FedConfig) -> None:
    # Only the server adjustment needs a shared dataset; Hybrid-FL and data sharing
    # without one are plain FedAvg.
    if cfg.shared_use != "adjust" or cfg.shared_fraction > 0:
        return
    if cfg.server_schedule == "feddu":
        _fail(
            "server_schedule",
            cfg.server_schedule,
            "'fixed' when shared_fraction is 0 (FedDU needs a shared dataset)",
        )
    if cfg.server_steps > 0:
        _fail(
            "server_steps",
            cfg.server_steps,
            "0 when shared_fraction is 0 (there is no shared dataset to train on)",
        )


def _check_schedule(cfg: FedConfig) -> None:
    if cfg.server_schedule == "feddu" and cfg.shared_use != "adjust":
        _fail(
            "server_schedule",
            cfg.server_schedule,
            f"'fixed' with shared_use={cfg.shared_use!r} (FedDU schedules the server "
            "adjustment, which only shared_use='adjust' has)",
        )


def _check_scaffold(cfg: FedConfig) -> None:
    if not isinstance(cfg.scaffold, bool):
        _fail("scaffold", cfg.scaffold, "True or False")
    if cfg.scaffold and cfg.aggregator != "fedavg":
        _fail(
            "scaffold",
            cfg.scaffold,
            f"False with aggregator={cfg.aggregator!r} (SCAFFOLD's control variates "
            "assume the devices' changes are averaged: use aggregator='fedavg')",
        )


def _check_server_opt(cfg: FedConfig) -> None:
    if cfg.server_opt != "none" and cfg.server_momentum != "none":
        _fail(
            "server_opt",
            cfg.server_opt,
            f"'none' with server_momentum={cfg.server_momentum!r} (two server "
            "optimisers on one move: pick one of them)",
        )


def _check_target(cfg: FedConfig) -> None:
    value = cfg.target_accuracy
    if value is not None and not (_real(value) and 0 < value <= 1):
        _fail("target_accuracy", value, "None or a number in (0, 1]")


def _check_seed(cfg: FedConfig) -> None:
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or cfg.seed < 0:
        _fail("seed", cfg.seed, "an integer >= 0")


_CHECKS = (
    _int_at_least("num_devices", 1),
    _in_range("participation", 0, 1, low_open=True, high_open=False),
    _choice("partition", PARTITIONS),
    _check_skew,
    _check_quantity_skew,
    _int_at_least("min_device_size", 1),
    _int_at_least("local_epochs", 1),
    _learning_rate("local_lr"),
    _int_at_least("batch_size", 1),
    _in_range("shared_fraction", 0, 1, low_open=False, high_open=True),
    _check_shared_classes,
    _int_at_least("server_steps", 0),
    _learning_rate("server_lr"),
    _int_at_least("server_batch_size", 1),
    _choice("shared_use", SHARED_USES),
    _choice("server_schedule", SERVER_SCHEDULES),
    _choice("feddu_mode", FEDDU_MODES),
    _in_range("server_decay", 0, 1, low_open=True, high_open=False),
    _choice("server_momentum", SERVER_MOMENTUMS),
    _in_range("momentum_beta", 0, 1, low_open=False, high_open=True),
    _check_schedule,
    _check_shared_steps,
    _non_negative("proximal_mu"),
    _choice("server_opt", SERVER_OPTS),
    _check_server_opt,
    _positive("server_opt_lr"),
    _in_range("server_opt_beta1", 0, 1, low_open=False, high_open=True),
    _in_range("server_opt_beta2", 0, 1, low_open=False, high_open=True),
    _positive("server_opt_tau"),
    _positive("device_gflops"),
    _positive("server_gflops"),
    _positive("device_mbps"),
    _positive("server_mbps"),
    _int_at_least("rounds", 1),
    _check_target,
    _choice("model", MODELS),
    _int_at_least("hidden", 1),
    _check_seed,
    _in_range("dropout", 0, 1, low_open=False, high_open=False),
    _optional_at_least("deadline", 0, low_open=True),
    _optional_at_least("max_norm_ratio", 1, low_open=False),
    _in_range("malicious_fraction", 0, 1, low_open=False, high_open=False),
    _choice("attack", ATTACKS),
    _positive("attack_strength"),
    _choice("aggregator", AGGREGATORS),
    _check_scaffold,
    _choice("engine", ENGINES),
)
