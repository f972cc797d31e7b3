"""``python -m fedlearn_lab``: run one experiment headless and write CSV and PNG.

Every ``FedConfig`` field is a flag (``--participation 0.2 --server-steps 10``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from collections.abc import Sequence
from pathlib import Path

from .config import FedConfig


def _parse_optional(kind: type):
    def parse(text: str):
        return None if text.lower() == "none" else kind(text)

    return parse


def _parse_classes(text: str) -> tuple[int, ...] | None:
    return None if text.lower() == "none" else tuple(int(c) for c in text.split(","))


_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _parse_bool(text: str) -> bool:
    if text.lower() not in _BOOLS:
        raise argparse.ArgumentTypeError(
            f"must be true or false (or 1/0, yes/no), got {text!r}"
        )
    return _BOOLS[text.lower()]


def _field_parser(annotation: typing.Any):
    if annotation is bool:
        return _parse_bool
    if annotation is int or annotation is float or annotation is str:
        return annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if len(args) == 1 and args[0] in (int, float):
        return _parse_optional(args[0])
    return _parse_classes  # tuple[int, ...] | None


def build_parser() -> argparse.ArgumentParser:
    """An argparse parser with one flag per ``FedConfig`` field."""
    parser = argparse.ArgumentParser(
        prog="fedlearn-lab",
        description="Run a federated experiment with a server adjustment.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--dataset", default="digits", help="'digits' or 'synthetic:ALPHA,BETA'"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("runs/latest"), help="output folder"
    )
    hints = typing.get_type_hints(FedConfig)
    for f in dataclasses.fields(FedConfig):
        flag = "--" + f.name.replace("_", "-")
        aliases = [flag] if "_" not in f.name else [flag, "--" + f.name]
        parser.add_argument(
            *aliases,
            dest=f.name,
            type=_field_parser(hints[f.name]),
            default=f.default,
            help=f"FedConfig.{f.name}",
        )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fedlearn-lab``; returns the exit code."""
    args = build_parser().parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(FedConfig)}
    try:
        cfg = FedConfig(**values)  # validate before the slow imports and any work
    except ValueError as err:
        print(f"fedlearn-lab: error: {err}", file=sys.stderr)
        return 2

    import matplotlib

    matplotlib.use("Agg")
    from tqdm import tqdm

    from .data import load_dataset
    from .federation import Federation
    from .plots import plot_accuracy
    from .publish import save_model
    from .rounds import DivergedError

    try:
        fed = Federation(cfg, load_dataset(args.dataset, cfg.seed))
    except ValueError as err:
        print(f"fedlearn-lab: error: {err}", file=sys.stderr)
        return 2
    bar = tqdm(total=cfg.rounds, unit="round", disable=args.quiet)

    def on_round(record) -> None:
        bar.set_postfix(
            accuracy=f"{record.accuracy:.3f}", before=f"{record.aggregate_accuracy:.3f}"
        )
        bar.update()

    status = 0
    try:
        fed.run(on_round)
    except DivergedError as err:
        print(f"fedlearn-lab: error: {err}", file=sys.stderr)
        status = 1
    finally:
        bar.close()
    args.out.mkdir(parents=True, exist_ok=True)
    fed.history.to_csv(args.out / "history.csv")
    fig = plot_accuracy(fed.history, label=fed.data.name)
    fig.axes[0].set_title(
        f"{cfg.partition} (skew {cfg.skew:g}), participation {cfg.participation:g}, "
        f"server_steps {cfg.server_steps}",
        fontsize="medium",
    )
    fig.savefig(args.out / "accuracy.png", dpi=120)
    print(f"{fed.history!r}; wrote {args.out}/history.csv and accuracy.png")
    if status == 0:
        save_model(fed.publish(), args.out / "model", cfg)
        spread = fed.device_accuracy()
        print(
            f"published model: accuracy on the devices' own data "
            f"mean {sum(spread) / len(spread):.3f}, "
            f"min {min(spread):.3f}, max {max(spread):.3f}"
        )
    return status
