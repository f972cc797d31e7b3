import csv
import os
import re
import signal
import subprocess
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch

import fedlearn_lab as fl
from fedlearn_lab import cli
from fedlearn_lab.cli import main


def test_cli_writes_history_csv_and_accuracy_png(tmp_path, capsys):
    status = main(
        [
            "--rounds",
            "2",
            "--participation",
            "0.3",
            "--server-steps",
            "3",
            "--out",
            str(tmp_path),
            "--quiet",
        ]
    )
    assert status == 0
    with (tmp_path / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["round"] for r in rows] == ["1", "2"]
    assert {r["server_steps"] for r in rows} == {"3"}
    assert (tmp_path / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "model" / "config.json").exists()
    assert "2 rounds" in capsys.readouterr().out


def test_cli_rejects_bad_flags_before_any_work(tmp_path, capsys):
    assert main(["--participation", "1.5", "--out", str(tmp_path / "x")]) == 2
    assert (
        "participation must be a number in (0, 1], got 1.5" in capsys.readouterr().err
    )
    assert not (tmp_path / "x").exists()


def test_every_config_field_is_a_flag():
    import dataclasses

    from fedlearn_lab import FedConfig
    from fedlearn_lab.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(
        ["--shared-classes", "1,2", "--target-accuracy", "0.9", "--seed", "3"]
    )
    assert (
        args.shared_classes == (1, 2) and args.target_accuracy == 0.9 and args.seed == 3
    )
    for f in dataclasses.fields(FedConfig):
        assert f.name in vars(args)


def test_bool_fields_parse_true_and_false(capsys):
    import pytest

    from fedlearn_lab.cli import build_parser

    parser = build_parser()
    for text, value in [("true", True), ("1", True), ("Yes", True), ("false", False),
                        ("0", False), ("no", False)]:  # fmt: skip
        assert parser.parse_args(["--scaffold", text]).scaffold is value
    assert parser.parse_args([]).scaffold is False
    with pytest.raises(SystemExit):
        parser.parse_args(["--scaffold", "maybe"])
    assert "must be true or false (or 1/0, yes/no), got 'maybe'" in (
        capsys.readouterr().err
    )


def test_console_script_is_declared():
    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts["fedlearn-lab"] == "fedlearn_lab.cli:main"


# ---- nothing lost, nothing mixed ----------------------------------------------------

QUICK = ["--rounds", "2", "--num-devices", "5", "--local-epochs", "1", "--quiet"]


def _rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if a round is trained."""

    def step(self):
        raise AssertionError("a round was trained")

    monkeypatch.setattr(fl.Federation, "step", step)


def test_an_out_folder_holding_files_is_refused_before_any_work(
    tmp_path, capsys, no_training
):
    out = tmp_path / "run"
    (out / "model").mkdir(parents=True)
    (out / "history.csv").write_text("round\n1\n")
    assert main([*QUICK, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--out {out} already holds files" in err and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == ["history.csv", "model"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no leftovers


def test_overwrite_replaces_the_whole_folder_with_the_new_run(tmp_path):
    out = tmp_path / "run"
    (out / "model").mkdir(parents=True)
    (out / "model" / "stale.pt").write_bytes(b"old")
    (out / "notes.txt").write_text("old run")
    assert main([*QUICK, "--out", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "accuracy.png",
        "history.csv",
        "model",
    ]
    assert sorted(p.name for p in (out / "model").iterdir()) == [
        "config.json",
        "model.pt",
    ]
    assert [r["round"] for r in _rows(out / "history.csv")] == ["1", "2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def _unwritable(tmp_path: Path) -> Path:
    if os.geteuid() == 0:  # root writes anywhere chmod allows; sysfs refuses it
        return Path("/sys/fedlearn-lab-test/run")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    return locked / "run"


@pytest.mark.parametrize("where", ["under a file", "read-only", "a file"])
def test_an_out_that_cannot_be_written_fails_before_any_work(
    tmp_path, capsys, no_training, where
):
    (tmp_path / "file").write_text("x")
    out = {
        "under a file": tmp_path / "file" / "run",
        "read-only": _unwritable(tmp_path),
        "a file": tmp_path / "file",
    }[where]
    assert main([*QUICK, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"fedlearn-lab: error: --out {out}" in err
    assert "Traceback" not in err


def test_a_diverged_run_writes_its_good_rounds_and_says_so(tmp_path, capsys):
    # A scaling attacker makes the global model's own loss NaN when first sampled
    # (round 6 with seed 0); the rounds before it are good.
    out = tmp_path / "run"
    flags = "--num-devices 10 --participation 0.1 --rounds 20 --local-epochs 1 "
    flags += "--malicious-fraction 0.1 --attack scale --attack-strength 1e20 --quiet"
    assert main([*flags.split(), "--out", str(out)]) == 1
    diverged = (out / "DIVERGED").read_text()
    bad_round = int(re.search(r"round (\d+) diverged", diverged).group(1))
    assert bad_round > 1
    rows = _rows(out / "history.csv")
    assert [int(r["round"]) for r in rows] == list(range(1, bad_round))
    model, _ = fl.load_model(out / "model")  # the last good round's global model
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    err = capsys.readouterr().err
    assert f"the {bad_round - 1} good rounds are in {out}" in err
    assert "Traceback" not in err


def test_a_second_signal_aborts_without_writing():
    stop = cli._Stop()
    with pytest.raises(cli._Abort), cli._stop_on_signals(stop):
        signal.raise_signal(signal.SIGINT)
        assert stop.signum == signal.SIGINT  # the first one only asks to stop
        signal.raise_signal(signal.SIGTERM)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _partial_rows(parent: Path) -> int:
    """Finished rounds that a running CLI has written beside its --out."""
    counts = [len(_rows(p)) for p in parent.glob(".run.*.partial/history.csv")]
    return max(counts, default=0)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)]
)
def test_a_signal_ends_the_run_after_its_round_and_writes_what_finished(
    tmp_path, sig, status
):
    out = tmp_path / "run"
    flags = "--rounds 5000 --num-devices 5 --participation 1 --local-epochs 1 --quiet"
    # A fresh process group: SIGINT must not reach pytest itself.
    child = subprocess.Popen(
        [sys.executable, "-m", "fedlearn_lab", *flags.split(), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while _partial_rows(tmp_path) < 1:  # the first round is on disk
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "no round finished in 120 s"
            time.sleep(0.05)
        child.send_signal(sig)
        stdout, stderr = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == status, stderr
    assert "Traceback" not in stderr
    rows = _rows(out / "history.csv")
    assert 1 <= len(rows) < 5000
    assert [int(r["round"]) for r in rows] == list(range(1, len(rows) + 1))
    marker = (out / "INTERRUPTED").read_text()
    assert f"stopped by {sig.name} after round {len(rows)} of 5000" in marker
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    model, cfg = fl.load_model(out / "model")  # the last finished round's model
    data = fl.load_digits(seed=cfg.seed)
    with torch.no_grad():
        accuracy = (model(data.x_test).argmax(1) == data.y_test).double().mean()
    assert float(accuracy) == pytest.approx(
        float(rows[-1]["accuracy"]), abs=1.5 / len(data.y_test)
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing partial


def test_help_documents_the_out_folder_and_the_signals():
    text = cli.build_parser().format_help()
    for words in ("--overwrite", "never mixes two", "INTERRUPTED", "shards per device"):
        assert words in text.replace("\n", " ")
