"""Real processes on this machine: a SuperLink and one SuperNode per device, started
with Flower's own CLI on 127.0.0.1, and the app run with ``flwr run``.

What :func:`run_processes` does, by hand (``P`` the SuperLink's port; each SuperNode
needs a port of its own):

    flower-superlink --insecure --host 127.0.0.1 --port P \\
        --disable-runtime-dependency-installation
    flower-supernode --insecure --superlink 127.0.0.1:P --host 127.0.0.1 --port P0 \\
        --node-config "partition-id=0 num-partitions=3"        # ... one per device
    flwr run examples/flower_app lab --stream --run-config "num-devices=3 rounds=3"

with a connection ``lab`` in ``$FLWR_HOME/config.toml`` (``[superlink.lab]``,
``address = "127.0.0.1:P"``, ``insecure = true``). Flower's default connection
(``local``) would start a SuperLink of its own that outlives the run.

No process of a run outlives :func:`run_processes`. Every process it starts, and
every process those start (Flower's SuperExec and apps run in sessions of their own,
so a process group cannot hold them), carries a marker in its environment. They are
stopped when the run returns or raises; SIGINT and SIGTERM raise inside the run, so
the same cleanup runs before the signal takes its usual effect; and a reaper process
(:mod:`fedlearn_lab.flower._reaper`) stops them if the process running the run dies
without cleaning up (SIGKILL, a crash).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from ..config import FedConfig
from ..data import load_dataset
from ..history import History
from ..state import make_setup
from . import _reaper
from ._reaper import alive as _alive
from ._reaper import descendants as _descendants
from .apps import load_history

#: The example app folder of a source checkout.
APP_DIR = Path(__file__).resolve().parents[2] / "examples" / "flower_app"
_MARKER = "FEDLEARN_FLOWER_RUN"  # set in every process a run starts, to find them all
_BIN = Path(sys.executable).parent  # Flower's commands, installed beside this Python
_REAPER_WAIT = 30.0  # seconds the reaper may take to exit once the run has stopped
_STOPPING = (signal.SIGINT, signal.SIGTERM)  # signals that stop a run, cleanly


class _Signalled(BaseException):
    """SIGINT or SIGTERM arrived during a run (BaseException: nothing catches it on
    the way out, so the cleanup runs)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def run_processes(
    cfg: FedConfig,
    *,
    dataset: str = "digits",
    app_dir: str | Path | None = None,
    model_out: str | Path | None = None,
    workdir: str | Path | None = None,
    timeout: float = 600.0,
) -> History:
    """Run one experiment as real processes (a SuperLink, ``cfg.num_devices``
    SuperNodes, ``flwr run``) on 127.0.0.1 and stop them all; returns its ``History``.

    ``dataset`` is what every process loads: ``"digits"`` or ``"synthetic:A,B"``.
    If ``model_out`` is set, the published model is saved there
    (:func:`fedlearn_lab.load_model` reads it).
    Logs and Flower's files go to ``workdir`` (default: a temporary folder, removed
    after a successful run). Raises ``TimeoutError`` after ``timeout`` seconds; a Flower
    start-up plus about 10 s per round (a fresh process per device and message).
    """
    if not isinstance(cfg, FedConfig):
        raise TypeError(f"cfg must be a FedConfig, got {type(cfg).__name__}")
    app_dir = Path(app_dir) if app_dir is not None else APP_DIR
    if not (app_dir / "pyproject.toml").is_file():
        raise ValueError(
            f"app_dir must be a Flower app folder with a pyproject.toml, got {app_dir}"
        )
    if not timeout > 0:
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    make_setup(cfg, load_dataset(dataset, cfg.seed))  # bad input fails before start-up
    own_dir = workdir is None
    work = Path(
        tempfile.mkdtemp(prefix="fedlearn-flower-") if own_dir else workdir
    ).resolve()
    work.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with _signals_stop_the_run(), _Processes(work) as procs:
        link = _start_federation(procs, cfg.num_devices, deadline)
        history = _flwr_run(procs, cfg, dataset, app_dir, link, deadline, model_out)
    if own_dir:
        shutil.rmtree(work, ignore_errors=True)
    return history


@contextlib.contextmanager
def _signals_stop_the_run() -> Iterator[None]:
    """Turn the first SIGINT or SIGTERM into an exception, so that the run's
    processes are stopped; then deliver the signal to its previous handler (SIGTERM's
    default ends the process, SIGINT's raises ``KeyboardInterrupt``). Signals can only
    be handled in the main thread; elsewhere the reaper is the safety net."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def handle(signum: int, frame: object) -> None:
        if not caught:  # later ones would interrupt the cleanup itself
            caught.append(signum)
            raise _Signalled(signum)

    previous = {s: signal.getsignal(s) for s in _STOPPING}
    # An ignored signal stays ignored; None: a handler set outside Python, kept.
    previous = {s: h for s, h in previous.items() if h not in (signal.SIG_IGN, None)}
    for s in previous:
        signal.signal(s, handle)
    try:
        yield
    except _Signalled as err:
        caught[0] = err.signum  # the run's processes are stopped by now
    finally:
        _restore(previous)
    if caught:
        try:
            signal.raise_signal(caught[0])
        except BaseException as err:  # KeyboardInterrupt: without our exception
            raise err from None
        name = signal.Signals(caught[0]).name
        raise RuntimeError(f"run_processes was stopped by {name}")


def _restore(handlers: dict[int, object]) -> None:
    for s, handler in handlers.items():
        signal.signal(s, handler)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back (they wait, pending) so that they cannot cut a
    cleanup short; they are delivered when it is done."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPPING)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _start_federation(procs: _Processes, num_devices: int, deadline: float) -> int:
    """Start a SuperLink and ``num_devices`` SuperNodes; returns the link's port."""
    link, *node_ports = _free_ports(num_devices + 1)
    flags = f"--insecure --host 127.0.0.1 --port {link}"
    procs.start(
        "superlink",
        "flower-superlink",
        *flags.split(),
        "--disable-runtime-dependency-installation",
    )
    procs.wait_healthy("superlink", f"http://127.0.0.1:{link}/health", deadline)
    for k, port in enumerate(node_ports):
        flags = (
            f"--insecure --superlink 127.0.0.1:{link} --host 127.0.0.1 --port {port} "
            "--max-retries 20 --max-wait-time 60"
        )
        node = f"partition-id={k} num-partitions={num_devices}"
        procs.start(
            f"supernode{k}", "flower-supernode", *flags.split(), "--node-config", node
        )
    return link


def _flwr_run(
    procs: _Processes,
    cfg: FedConfig,
    dataset: str,
    app_dir: Path,
    link: int,
    deadline: float,
    model_out: str | Path | None,
) -> History:
    """``flwr run --stream`` on connection ``lab``; returns the ServerApp's history."""
    work = procs.work
    cli_home = work / "cli"
    cli_home.mkdir(exist_ok=True)
    (cli_home / "config.toml").write_text(
        f'[superlink]\ndefault = "lab"\n\n[superlink.lab]\n'
        f'address = "127.0.0.1:{link}"\ninsecure = true\n'
    )
    config_path, out = work / "config.json", work / "history.json"
    config_path.write_text(json.dumps(cfg.to_dict()))
    model_path = Path(model_out).resolve() if model_out is not None else ""
    run_config = (
        f'config-path="{config_path}" out-path="{out}" dataset="{dataset}" '
        f'model-path="{model_path}"'
    )
    env = {**procs.env, "FLWR_HOME": str(cli_home)}
    command = [
        _bin("flwr"),
        "run",
        str(app_dir),
        "lab",
        "--stream",
        "--run-config",
        run_config,
    ]
    try:
        run = subprocess.run(
            command,
            env=env,
            capture_output=True,
            text=True,
            timeout=max(1.0, deadline - time.monotonic()),
        )
    except subprocess.TimeoutExpired as err:
        raise TimeoutError(
            f"the Flower run did not finish in time; logs in {work}"
        ) from err
    (work / "flwr_run.log").write_text(run.stdout + run.stderr)
    found = re.search(r"Successfully started run (\d+)", run.stdout)
    if found is None:
        raise RuntimeError(
            f"flwr run could not start the run:\n{_tail(run.stdout + run.stderr)}"
        )
    # `--stream` ends with status 0 even when the ServerApp failed: ask the SuperLink.
    listing = subprocess.run(
        [_bin("flwr"), "ls", "lab", "--run-id", found.group(1), "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    status = re.search(r'"status":\s*"([^"]+)"', listing.stdout)
    if status is None or status.group(1) != "finished:completed" or not out.is_file():
        what = status.group(1) if status else "unknown"
        raise RuntimeError(
            f"the Flower run ended with status {what}; logs in {work}:\n"
            f"{_tail(run.stdout)}"
        )
    return load_history(out)


class _Processes:
    """Starts processes with their logs in ``work``; on exit, stops every process
    they started (Flower's SuperExec runs in its own session); checks none is left.
    A reaper process stops them too if this process dies first."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.popens: list[subprocess.Popen] = []
        self.marker = f"{_MARKER}={work}"
        self.reaper: subprocess.Popen | None = None
        package_root = str(Path(__file__).resolve().parents[2])  # this fedlearn_lab
        path = os.environ.get("PYTHONPATH")
        self.env = {
            **os.environ,
            "PATH": os.pathsep.join([str(_BIN), os.environ.get("PATH", "")]),
            "PYTHONPATH": package_root + (os.pathsep + path if path else ""),
            "PYTHONUNBUFFERED": "1",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            _MARKER: str(work),  # self.marker
        }
        self.env.setdefault("FLWR_TELEMETRY_ENABLED", "0")

    def __enter__(self) -> _Processes:
        # Its stdin closes when this process closes it or dies; in a session of its
        # own, a Ctrl-C to this terminal's foreground group does not reach it.
        self.reaper = subprocess.Popen(
            [sys.executable, "-I", _reaper.__file__, self.marker],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        with _signals_held():
            self.stop()

    def start(self, name: str, program: str, *args: str) -> None:
        """Start ``program`` with ``FLWR_HOME`` ``work/name`` and log ``name.log``."""
        home = self.work / name
        home.mkdir(exist_ok=True)
        with open(self.work / f"{name}.log", "w") as log:
            self.popens.append(
                subprocess.Popen(
                    [_bin(program), *args],
                    env={**self.env, "FLWR_HOME": str(home)},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

    def wait_healthy(self, name: str, url: str, deadline: float) -> None:
        """Wait until ``url`` answers 200 (the process ``name`` was started last)."""
        while time.monotonic() < deadline:
            if self.popens[-1].poll() is not None:
                log = (self.work / f"{name}.log").read_text()
                raise RuntimeError(f"{name} exited at start:\n{_tail(log)}")
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"{name} did not answer at {url}; logs in {self.work}")

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every started process and its descendants, SIGKILL what remains;
        then let the reaper go."""
        roots = [p.pid for p in self.popens]
        started = set(roots) | _descendants(roots)

        def find() -> set[int]:
            for p in self.popens:
                p.poll()  # collect the exit status of those that ended
            return {pid for pid in started if _alive(pid)} | _reaper.marked_processes(
                self.marker
            )

        left = _reaper.terminate(find, grace)
        self._release_reaper()
        if left:
            raise RuntimeError(
                f"processes {sorted(left)} of the Flower run survived SIGKILL"
            )

    def _release_reaper(self) -> None:
        """Close the reaper's stdin: it finds nothing left to stop, and exits."""
        if self.reaper is None:
            return
        with contextlib.suppress(OSError):
            self.reaper.stdin.close()
        try:
            self.reaper.wait(timeout=_REAPER_WAIT)
        except subprocess.TimeoutExpired:
            self.reaper.kill()
            self.reaper.wait(timeout=_REAPER_WAIT)


def marked_processes(work: str) -> set[int]:
    """Live processes started for the run whose folder is ``work`` (found by their
    environment)."""
    return _reaper.marked_processes(f"{_MARKER}={work}")


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _bin(program: str) -> str:
    path = _BIN / program
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: pip install 'fedlearn_lab[flower]'")
    return str(path)


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])
