"""``python -m fedlearn_lab``: run one experiment headless and write CSV and PNG.

Every ``FedConfig`` field is a flag (``--participation 0.2 --server-steps 10``).

Nothing is lost and nothing is mixed. ``--out`` is checked before any work: a folder
that holds files is refused unless ``--overwrite``, and one that cannot be written is
an error. The run is written into a hidden folder beside ``--out`` (``.NAME.*.partial``,
``history.csv`` growing a row per round) and moved into place when it ends, so
``--out`` only ever holds one whole run. Ctrl-C (SIGINT) or SIGTERM ends the run after
the round in progress; the rounds that finished are written with a marker file
``INTERRUPTED``, and the exit status is 130 or 143 (a second signal aborts at once and
writes nothing). A run that diverges writes its good rounds with a marker ``DIVERGED``
and exits with 1. Bad flags exit with 2.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import os
import shutil
import signal
import sys
import tempfile
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .config import FedConfig

_EPILOG = """\
--out: a folder that already holds files is refused unless --overwrite is given;
the run is written beside it and moved in when it ends, so the folder never mixes two
runs. It holds history.csv, accuracy.png and model/ (the global model of the last
finished round), plus INTERRUPTED or DIVERGED if the run ended early.
Ctrl-C or SIGTERM: stop after the round in progress and write what finished (exit
130 or 143); a second one aborts without writing. Exit 1: the run diverged (its good
rounds are written). Exit 2: bad flags or an --out that cannot be used.
"""


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


# Help beyond "FedConfig.NAME" where a flag's meaning is not obvious from its name.
_HELP = {
    "skew": "dirichlet: alpha (smaller is more skewed); shards: shards per device",
    "min_device_size": "every device gets at least this many samples",
}


def build_parser() -> argparse.ArgumentParser:
    """An argparse parser with one flag per ``FedConfig`` field."""
    parser = argparse.ArgumentParser(
        prog="fedlearn-lab",
        description="Run a federated experiment with a server adjustment.",
        formatter_class=_Formatter,
        epilog=_EPILOG,
    )
    parser.add_argument(
        "--dataset", default="digits", help="'digits' or 'synthetic:ALPHA,BETA'"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs/latest"),
        help="output folder (refused if it holds files, unless --overwrite)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace what --out holds with this run (when the run ends)",
    )
    hints = typing.get_type_hints(FedConfig)
    for f in dataclasses.fields(FedConfig):
        flag = "--" + f.name.replace("_", "-")
        aliases = [flag] if "_" not in f.name else [flag, "--" + f.name]
        extra = f": {_HELP[f.name]}" if f.name in _HELP else ""
        parser.add_argument(
            *aliases,
            dest=f.name,
            type=_field_parser(hints[f.name]),
            default=f.default,
            help=f"FedConfig.{f.name}{extra}",
        )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


class _Formatter(
    argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter
):
    """Defaults in the help, and the epilog as written."""


class _Abort(Exception):
    """A second SIGINT/SIGTERM: stop now, write nothing."""


@dataclasses.dataclass
class _Stop:
    """The signal that asked the run to stop after its round (None: not asked), and
    whether a second one may still abort it."""

    signum: int | None = None
    abortable: bool = True


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fedlearn-lab``; returns the exit code."""
    args = build_parser().parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(FedConfig)}
    try:
        cfg = FedConfig(**values)  # validate before the slow imports and any work
        staging = _staging_folder(args.out, overwrite=args.overwrite)
    except ValueError as err:
        return _fail(err, 2)
    stop = _Stop()
    try:
        with _stop_on_signals(stop):
            return _run(cfg, args, staging, stop)
    except _Abort:
        print("fedlearn-lab: aborted; nothing written", file=sys.stderr)
        return 128 + (stop.signum or signal.SIGINT)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone once moved into place


def _run(cfg: FedConfig, args: argparse.Namespace, staging: Path, stop: _Stop) -> int:
    import matplotlib

    matplotlib.use("Agg")

    from . import Federation, load_dataset

    try:
        fed = Federation(cfg, load_dataset(args.dataset, cfg.seed))
    except ValueError as err:
        return _fail(err, 2)
    diverged = _train(fed, staging, stop, quiet=args.quiet)
    stop.abortable = False  # from here a signal changes nothing: the run is written
    if stop.signum is not None and not fed.history:
        print(
            "fedlearn-lab: stopped before a round finished; nothing written",
            file=sys.stderr,
        )
        return 128 + stop.signum
    marker = _marker(fed, stop, diverged)
    _write_outputs(fed, staging, marker)
    try:
        _move_into_place(staging, args.out, overwrite=args.overwrite)
    except OSError as err:
        kept = staging.with_name(staging.name.replace(".partial", ".kept"))
        staging.rename(kept)
        return _fail(f"cannot move the run into {args.out} ({err}); it is in {kept}", 1)
    print(f"{fed.history!r}; wrote {args.out}/history.csv and accuracy.png")
    if diverged is not None:
        rounds = len(fed.history)
        note = f"(the {rounds} good rounds are in {args.out}; see DIVERGED)"
        return _fail(f"{diverged}\n{note}", 1)
    if stop.signum is not None:
        print(f"fedlearn-lab: {marker[1]}; see {args.out}/INTERRUPTED", file=sys.stderr)
        return 128 + stop.signum
    _print_spread(fed.device_accuracy())
    return 0


def _marker(
    fed: Any, stop: _Stop, diverged: Exception | None
) -> tuple[str, str] | None:
    """The file that says how an unfinished run ended, and its text (None: finished)."""
    if diverged is not None:
        return "DIVERGED", str(diverged)
    if stop.signum is not None:
        name = signal.Signals(stop.signum).name
        done = f"round {fed.round} of {fed.cfg.rounds}"
        return "INTERRUPTED", f"stopped by {name} after {done}"
    return None


def _train(fed: Any, staging: Path, stop: _Stop, *, quiet: bool) -> Exception | None:
    """Run rounds until the end, a stop request or divergence (returned); each
    finished round is appended to ``staging/history.csv`` at once."""
    from tqdm import tqdm

    from . import DivergedError, RoundRecord

    names = [f.name for f in dataclasses.fields(RoundRecord)]
    bar = tqdm(total=fed.cfg.rounds, unit="round", disable=quiet)
    with bar, (staging / "history.csv").open("w", newline="") as f:
        rows = csv.DictWriter(f, fieldnames=names)
        rows.writeheader()
        while not fed.finished and stop.signum is None:
            try:
                record = fed.step()
            except DivergedError as err:
                return err
            rows.writerow(record.to_row())
            f.flush()
            bar.set_postfix(
                accuracy=f"{record.accuracy:.3f}",
                before=f"{record.aggregate_accuracy:.3f}",
            )
            bar.update()
    return None


def _write_outputs(fed: Any, staging: Path, marker: tuple[str, str] | None) -> None:
    """history.csv, accuracy.png, the global model (after a round) and the marker."""
    from .plots import plot_accuracy
    from .publish import save_model

    cfg = fed.cfg
    fed.history.to_csv(staging / "history.csv")
    fig = plot_accuracy(fed.history, label=fed.data.name)
    fig.axes[0].set_title(
        f"{cfg.partition} (skew {cfg.skew:g}), participation {cfg.participation:g}, "
        f"server_steps {cfg.server_steps}",
        fontsize="medium",
    )
    fig.savefig(staging / "accuracy.png", dpi=120)
    if fed.history:
        save_model(fed.publish(), staging / "model", cfg)
    if marker is not None:
        name, text = marker
        (staging / name).write_text(text + "\n")


def _staging_folder(out: Path, *, overwrite: bool) -> Path:
    """Check that ``out`` can take a run, and make the hidden folder beside it
    that the run is written into (``ValueError`` if either fails)."""
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"--out {out} cannot be written: {existing} is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(
            f"--out {out} already holds files (an earlier run?): pass --overwrite to "
            "replace them with this run, or choose another folder"
        )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(
            tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
        )
        (staging / "history.csv").touch()
    except OSError as err:
        raise ValueError(
            f"--out {out} cannot be written: {err.strerror or err} "
            f"({err.filename or out.parent})"
        ) from None
    return staging


def _move_into_place(staging: Path, out: Path, *, overwrite: bool) -> None:
    """Rename ``staging`` to ``out``; an existing ``out`` goes only if it is empty
    or ``overwrite`` is set (renaming over a folder with files fails)."""
    old = None
    if overwrite and out.is_dir() and any(out.iterdir()):
        old = Path(
            tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent)
        )
        os.replace(out, old / out.name)
    os.replace(staging, out)  # replaces an empty folder; refuses a full one
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _stop_on_signals(stop: _Stop) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop.signum`` (the run ends after its round); a
    second one raises ``_Abort`` while training. The previous handlers come back
    afterwards."""

    def handle(signum: int, frame: object) -> None:
        if stop.signum is not None:
            if stop.abortable:
                raise _Abort
            return
        stop.signum = signum
        name = signal.Signals(signum).name
        print(
            f"\nfedlearn-lab: {name}: stopping after the round in progress "
            "(again to abort)",
            file=sys.stderr,
        )

    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _print_spread(spread: list[float]) -> None:
    print(
        f"published model: accuracy on the devices' own data "
        f"mean {sum(spread) / len(spread):.3f}, "
        f"min {min(spread):.3f}, max {max(spread):.3f}"
    )


def _fail(err: object, status: int) -> int:
    print(f"fedlearn-lab: error: {err}", file=sys.stderr)
    return status
