import csv
from importlib.metadata import entry_points

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
