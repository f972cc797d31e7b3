"""Golden histories: refactors keep every number of these runs, bit for bit.

Each config's full history (every ``RoundRecord`` field but ``seconds``) was recorded
into ``tests/golden/NAME.json`` by ``python tests/test_golden.py``, with the machine
it was recorded on in ``tests/golden/MACHINE.json``. On that machine (same torch, same
CPU) every value is compared exactly (floats through JSON round-trip exactly; NaN
equals NaN). On another CPU, torch's kernels (MKL, SIMD widths) may round the last
bits of a float differently (seen: up to 7e-5 relative after 8 rounds of a median),
so there the floats are compared to ``FLOAT_TOLERANCE`` and everything else (devices,
counts, steps, failures) exactly. A golden file changes only in a commit that says
why.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import platform
import sys
from pathlib import Path

import pytest
import torch

import fedlearn_lab as fl

GOLDEN = Path(__file__).parent / "golden"
MACHINE = GOLDEN / "MACHINE.json"  # where the goldens were recorded
FLOAT_TOLERANCE = {"rel_tol": 2e-4, "abs_tol": 1e-6}  # on another CPU only
_QUICK = {"num_devices": 20, "participation": 0.25, "rounds": 8}
CONFIGS: dict[str, dict] = {
    "default": {},
    "reference": {"engine": "reference", **_QUICK},
    "shards": {"partition": "shards", "skew": 2, **_QUICK},
    "feddu_steps": {**fl.METHODS["feddu"], **_QUICK},
    "feddu_interpolate": {**fl.METHODS["feddu"], "feddu_mode": "interpolate", **_QUICK},
    "feddum": {**fl.METHODS["feddu"], "server_momentum": "feddum", **_QUICK},
    "fedavgm": {**fl.METHODS["fedavg"], "server_momentum": "fedavgm", **_QUICK},
    "hybrid": {**fl.METHODS["hybrid"], **_QUICK},
    "data_sharing": {**fl.METHODS["data_sharing"], **_QUICK},
    "dropout_deadline": {"dropout": 0.3, "deadline": 1.5, **_QUICK},
    "sign_flip_median": {
        "malicious_fraction": 0.2,
        "attack": "sign_flip",
        "aggregator": "median",
        **_QUICK,
    },
    "label_flip": {"malicious_fraction": 0.3, "attack": "label_flip", **_QUICK},
}


def history_rows(name: str) -> list[dict]:
    """The run of ``CONFIGS[name]`` on digits, as JSON-able rows without ``seconds``."""
    torch.set_num_threads(1)
    history = fl.run(fl.FedConfig(**CONFIGS[name]), fl.load_digits()).history
    rows = [dataclasses.asdict(r) for r in history]
    for row in rows:
        del row["seconds"]
    return json.loads(json.dumps(rows))  # tuples -> lists, as read back


def machine() -> dict[str, str]:
    """What decides the last bits of a float here: torch and the CPU it runs on."""
    cpu = platform.processor()
    info = Path("/proc/cpuinfo")
    if info.exists():  # the model and its instruction sets
        lines = info.read_text().splitlines()
        cpu = "\n".join(
            sorted({ln for ln in lines if ln.startswith(("model name", "flags"))})
        )
    return {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu": hashlib.sha256(cpu.encode()).hexdigest()[:16],
    }


def _same(a: object, b: object, exact: bool) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b if exact else math.isclose(a, b, **FLOAT_TOLERANCE)
    if isinstance(a, list) and isinstance(b, list):
        pairs = zip(a, b, strict=False)
        return len(a) == len(b) and all(_same(x, y, exact) for x, y in pairs)
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_history_equals_the_golden_one(name):
    """Bit for bit on the machine the goldens were recorded on; elsewhere floats to
    ``FLOAT_TOLERANCE``."""
    exact = MACHINE.exists() and json.loads(MACHINE.read_text()) == machine()
    golden = json.loads((GOLDEN / f"{name}.json").read_text())
    rows = history_rows(name)
    assert len(rows) == len(golden)
    for got, want in zip(rows, golden, strict=True):
        assert got.keys() == want.keys()
        diff = {k: (got[k], want[k]) for k in want if not _same(got[k], want[k], exact)}
        assert not diff, f"{name}, round {want['round']} (exact={exact}): {diff}"


def test_the_float_tolerance_still_tells_runs_apart():
    """Another CPU's check can fail: a learning rate 0.1% off (a refactor that
    slips) moves the history beyond the tolerance (about 8e-4 relative, where
    another CPU's rounding gave at most 7e-5)."""
    golden = json.loads((GOLDEN / "reference.json").read_text())
    cfg = fl.FedConfig(**CONFIGS["reference"]).replace(local_lr=0.1001)
    history = fl.run(cfg, fl.load_digits()).history
    losses = [r.loss for r in history]
    assert not _same(losses, [row["loss"] for row in golden], exact=False)


if __name__ == "__main__":  # record: python tests/test_golden.py [NAME ...]
    GOLDEN.mkdir(exist_ok=True)
    MACHINE.write_text(json.dumps(machine(), indent=1) + "\n")
    for name in sys.argv[1:] or sorted(CONFIGS):
        rows = [json.dumps(row) for row in history_rows(name)]  # a round a line
        (GOLDEN / f"{name}.json").write_text("[\n" + ",\n".join(rows) + "\n]\n")
        print(f"recorded {name}")
