"""Real processes on this machine: a SuperLink and one SuperNode per device, started
with Flower's own CLI on 127.0.0.1, and the app run with ``flwr run``.

What :func:`run_processes` does, by hand, in the lab mode (``P`` the SuperLink's
port; each SuperNode needs a port of its own):

    flower-superlink --insecure --host 127.0.0.1 --port P \\
        --disable-runtime-dependency-installation
    flower-supernode --insecure --superlink 127.0.0.1:P --host 127.0.0.1 --port P0 \\
        --node-config "device-id=0"                            # ... one per device
    flwr run examples/flower_app lab --stream --run-config "num-devices=3 rounds=3"

with a connection ``lab`` in ``$FLWR_HOME/config.toml`` (``[superlink.lab]``,
``address = "127.0.0.1:P"``, ``insecure = true``). Flower's default connection
(``local``) would start a SuperLink of its own that outlives the run. A secure run
(the deployment mode's default, :class:`FlowerProcesses`) replaces ``--insecure`` by
the SuperLink's TLS files and ``--enable-supernode-auth``, registers each SuperNode's
public key (``flwr supernode register``) and gives the SuperNodes the CA and their
private keys; the README has the commands.

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
import ssl
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
from .deploy import (
    SERVER_FILE,
    check_deployable,
    check_mode,
    device_file,
    write_setup,
)
from .security import make_keys

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
    mode: str = "lab",
    secure: bool | None = None,
    app_dir: str | Path | None = None,
    model_out: str | Path | None = None,
    workdir: str | Path | None = None,
    timeout: float = 600.0,
    round_timeout: float = 300.0,
    node_configs: dict[int, str] | None = None,
) -> History:
    """Run one experiment as real processes (a SuperLink, ``cfg.num_devices``
    SuperNodes, ``flwr run``) on 127.0.0.1 and stop them all; returns its ``History``.

    ``dataset`` is the data: ``"digits"`` or ``"synthetic:A,B"``. ``mode="lab"``:
    every process loads it whole (the lab's shortcut). ``mode="deployment"``: it is
    written as files (:func:`~fedlearn_lab.flower.deploy.write_data_files`) and the
    server reads only ``server.npz`` (shared dataset, test set), each SuperNode only
    its ``device-K.npz``. ``secure`` (default: in deployment mode) runs with TLS and
    SuperNode authentication (:class:`FlowerProcesses`); the lab mode's default,
    ``--insecure``, is for a run on this one machine only.
    A device whose reply has not come within ``round_timeout`` seconds is lost
    for that round. ``node_configs`` adds node config entries to device ``k``'s
    SuperNode (``{1: 'fault="raise@2"'}``). If ``model_out`` is set, the published
    model is saved there (:func:`fedlearn_lab.load_model` reads it).
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
    for name, value in (("timeout", timeout), ("round_timeout", round_timeout)):
        if not value > 0:
            raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
    check_mode(mode)
    setup = make_setup(cfg, load_dataset(dataset, cfg.seed))  # bad input fails here
    if mode == "deployment":
        check_deployable(cfg)
    own_dir = workdir is None
    work = Path(
        tempfile.mkdtemp(prefix="fedlearn-flower-") if own_dir else workdir
    ).resolve()
    work.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    secure = mode == "deployment" if secure is None else secure
    run_config = {"mode": mode, "dataset": dataset, "round-timeout": round_timeout}
    with _signals_stop_the_run(), FlowerProcesses(work, secure=secure) as flower:
        flower.start_superlink(deadline)
        nodes = {k: f"device-id={k}" for k in range(cfg.num_devices)}
        if mode == "deployment":
            folder = write_setup(setup, work / "data")
            run_config["server-data"] = str(folder / SERVER_FILE)
            for k in nodes:
                nodes[k] += f' data-path="{folder / device_file(k)}"'
        for k, extra in (node_configs or {}).items():
            nodes[k] += f" {extra}"
        for k, node_config in nodes.items():
            flower.start_supernode(f"supernode{k}", node_config)
        history = flower.run(cfg, app_dir, run_config, deadline, model_out)
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


class FlowerProcesses:
    """A SuperLink and SuperNodes as real processes on 127.0.0.1, and ``flwr run``;
    leaving the ``with`` block stops every process they started (Flower's
    SuperExec runs in its own session) and checks none is left. A reaper process
    stops them too if this process dies first. Logs go to ``work``.

    ``secure=True``: the SuperLink serves TLS with a certificate of a CA made for
    this run, and admits only SuperNodes whose public key was registered with it
    (``flwr supernode register``); keys and certificates are generated into
    ``work/keys`` (:mod:`fedlearn_lab.flower.security`). ``secure=False`` runs
    ``--insecure``: for a lab on this one machine only.
    """

    def __init__(self, work: Path, *, secure: bool = False) -> None:
        self.work = Path(work).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.popens: dict[str, subprocess.Popen] = {}
        self.marker = f"{_MARKER}={self.work}"
        self.reaper: subprocess.Popen | None = None
        self.keys = make_keys(self.work / "keys") if secure else None
        self.link: int | None = None  # the SuperLink's Fleet API port
        self.ports: set[int] = set()  # every port handed to a process of this run
        self.cli_home = self.work / "cli"
        package_root = str(Path(__file__).resolve().parents[2])  # this fedlearn_lab
        path = os.environ.get("PYTHONPATH")
        self.env = {
            **os.environ,
            "PATH": os.pathsep.join([str(_BIN), os.environ.get("PATH", "")]),
            "PYTHONPATH": package_root + (os.pathsep + path if path else ""),
            "PYTHONUNBUFFERED": "1",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            _MARKER: str(self.work),  # self.marker
        }
        self.env.setdefault("FLWR_TELEMETRY_ENABLED", "0")

    def __enter__(self) -> FlowerProcesses:
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

    def start(self, name: str, program: str, *args: str) -> subprocess.Popen:
        """Start ``program`` with ``FLWR_HOME`` ``work/name`` and log ``name.log``."""
        home = self.work / name
        home.mkdir(exist_ok=True)
        with open(self.work / f"{name}.log", "w") as log:
            self.popens[name] = subprocess.Popen(
                [_bin(program), *args],
                env={**self.env, "FLWR_HOME": str(home)},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self.popens[name]

    def start_superlink(self, deadline: float) -> int:
        """Start the SuperLink and wait until it answers; returns its Fleet port.
        Secure: TLS with this run's server certificate, SuperNode authentication
        on."""
        self.link = self._new_port()
        security = ["--insecure"]
        if self.keys is not None:
            security = [
                "--ssl-ca-certfile", str(self.keys.ca),
                "--ssl-certfile", str(self.keys.server_cert),
                "--ssl-keyfile", str(self.keys.server_key),
                "--enable-supernode-auth",
            ]  # fmt: skip
        self.start(
            "superlink",
            "flower-superlink",
            *security,
            "--host", "127.0.0.1",
            "--port", str(self.link),
            "--disable-runtime-dependency-installation",
        )  # fmt: skip
        self._write_cli_config()
        self.wait_healthy("superlink", deadline)
        return self.link

    def start_supernode(
        self, name: str, node_config: str, *, key: str = "registered", ca: bool = True
    ) -> subprocess.Popen:
        """Start a SuperNode with ``node_config`` (``"device-id=0"``). Secure runs
        only: ``key="registered"`` gives it a key registered with the SuperLink (a
        member), ``"unknown"`` one that is not (a stranger); ``ca=False`` leaves out
        the CA's certificate, so it cannot trust the SuperLink."""
        if self.link is None:
            raise RuntimeError("start the SuperLink first")
        flags = ["--insecure"]
        if self.keys is not None:
            private, public = self.keys.node(name)
            if key == "registered":
                self._register(public)
            flags = ["--auth-supernode-private-key", str(private)]
            if ca:
                flags += ["--root-certificates", str(self.keys.ca)]
        return self.start(
            name,
            "flower-supernode",
            *flags,
            "--superlink", f"127.0.0.1:{self.link}",
            "--host", "127.0.0.1",
            "--port", str(self._new_port()),
            "--max-retries", "20",
            "--max-wait-time", "60",
            "--node-config", node_config,
        )  # fmt: skip

    def _new_port(self) -> int:
        """A free port on 127.0.0.1 not yet handed out in this run: a process
        started a moment ago may not have bound its own yet, and the system could
        offer it again."""
        while (port := _free_port()) in self.ports:
            pass
        self.ports.add(port)
        return port

    def kill(self, name: str) -> None:
        """SIGKILL the process ``name`` and those it started (a device dies)."""
        popen = self.popens[name]
        for pid in {popen.pid} | _descendants([popen.pid]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        popen.wait(timeout=30)

    def run(
        self,
        cfg: FedConfig,
        app_dir: Path,
        run_config: dict[str, object],
        deadline: float,
        model_out: str | Path | None = None,
    ) -> History:
        """``flwr run --stream`` of ``app_dir`` with ``cfg`` and ``run_config``;
        returns the ServerApp's history (also in ``work/history.json``, rewritten
        after each round)."""
        work = self.work
        config_path, out = work / "config.json", work / "history.json"
        config_path.write_text(json.dumps(cfg.to_dict()))
        model_path = Path(model_out).resolve() if model_out is not None else ""
        run_config = {
            **run_config,
            "config-path": str(config_path),
            "out-path": str(out),
            "model-path": str(model_path),
        }
        overrides = " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())
        try:
            run = self._flwr(
                "run",
                str(app_dir),
                "lab",
                "--stream",
                "--run-config",
                overrides,
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
        # `--stream` ends with status 0 even when the ServerApp failed: ask the link.
        listing = self._flwr(
            "ls", "lab", "--run-id", found.group(1), "--format", "json", timeout=60
        )
        status = re.search(r'"status":\s*"([^"]+)"', listing.stdout)
        if (
            status is None
            or status.group(1) != "finished:completed"
            or not out.is_file()
        ):
            what = status.group(1) if status else "unknown"
            raise RuntimeError(
                f"the Flower run ended with status {what}; logs in {work}:\n"
                f"{_tail(run.stdout)}"
            )
        return load_history(out)

    def _flwr(self, *args: str, timeout: float) -> subprocess.CompletedProcess:
        """The ``flwr`` CLI, connected to this SuperLink as ``lab``."""
        return subprocess.run(
            [_bin("flwr"), *args],
            env={**self.env, "FLWR_HOME": str(self.cli_home)},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def _write_cli_config(self) -> None:
        """The ``flwr`` CLI's connection ``lab`` to this SuperLink."""
        self.cli_home.mkdir(exist_ok=True)
        security = "insecure = true"
        if self.keys is not None:
            security = f'root-certificates = "{self.keys.ca}"'
        (self.cli_home / "config.toml").write_text(
            f'[superlink]\ndefault = "lab"\n\n[superlink.lab]\n'
            f'address = "127.0.0.1:{self.link}"\n{security}\n'
        )

    def _register(self, public_key: Path) -> None:
        """Register a SuperNode's public key with the SuperLink (a member)."""
        done = self._flwr("supernode", "register", str(public_key), "lab", timeout=60)
        if done.returncode != 0:
            raise RuntimeError(
                f"flwr supernode register failed:\n{_tail(done.stdout + done.stderr)}"
            )

    def wait_healthy(self, name: str, deadline: float) -> None:
        """Wait until the SuperLink's ``/health`` answers 200 (while ``name`` runs)."""
        scheme, context = "http", None
        if self.keys is not None:  # over TLS, trusting this run's CA only
            scheme, context = "https", ssl.create_default_context(cafile=self.keys.ca)
            context.verify_flags |= ssl.VERIFY_X509_STRICT  # Python 3.13's default
        url = f"{scheme}://127.0.0.1:{self.link}/health"
        while time.monotonic() < deadline:
            if self.popens[name].poll() is not None:
                log = (self.work / f"{name}.log").read_text()
                raise RuntimeError(f"{name} exited at start:\n{_tail(log)}")
            try:
                with urllib.request.urlopen(url, timeout=1, context=context) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"{name} did not answer at {url}; logs in {self.work}")

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every started process and its descendants, SIGKILL what remains;
        then let the reaper go."""
        roots = [p.pid for p in self.popens.values()]
        started = set(roots) | _descendants(roots)

        def find() -> set[int]:
            for p in self.popens.values():
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bin(program: str) -> str:
    path = _BIN / program
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: pip install 'fedlearn_lab[flower]'")
    return str(path)


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])
