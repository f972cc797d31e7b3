"""Golden histories: refactors keep every number of these runs, bit for bit.

Each config's full history (every ``RoundRecord`` field but ``seconds``) was recorded
into ``tests/golden/NAME.json`` by ``python tests/test_golden.py`` and is compared
exactly here (floats through JSON round-trip exactly; NaN equals NaN). A golden file
changes only in a commit that says why.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import pytest
import torch

import fedlearn_lab as fl

GOLDEN = Path(__file__).parent / "golden"
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


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_same, a, b))
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_history_equals_the_golden_one_bit_for_bit(name):
    golden = json.loads((GOLDEN / f"{name}.json").read_text())
    rows = history_rows(name)
    assert len(rows) == len(golden)
    for got, want in zip(rows, golden, strict=True):
        assert got.keys() == want.keys()
        diff = {k: (got[k], want[k]) for k in want if not _same(got[k], want[k])}
        assert not diff, f"{name}, round {want['round']}: {diff}"


if __name__ == "__main__":  # record: python tests/test_golden.py [NAME ...]
    GOLDEN.mkdir(exist_ok=True)
    for name in sys.argv[1:] or sorted(CONFIGS):
        rows = [json.dumps(row) for row in history_rows(name)]  # a round a line
        (GOLDEN / f"{name}.json").write_text("[\n" + ",\n".join(rows) + "\n]\n")
        print(f"recorded {name}")
