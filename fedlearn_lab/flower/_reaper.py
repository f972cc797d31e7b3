"""Find and stop the processes of one Flower run, even once the process that started
them has died.

Standard library only: :mod:`fedlearn_lab.flower.processes` imports it, and it also
runs as a script, ``python -I _reaper.py MARKER``, without importing fedlearn_lab,
torch or flwr. As a script it waits until its standard input closes (the process
that started it closes it when done, and the kernel closes it when that process
dies, even by SIGKILL), then stops every process whose environment holds
``MARKER`` (``NAME=value``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

# A process that ended, or whose /proc entry vanished or is not ours, meanwhile.
GONE = (ProcessLookupError, FileNotFoundError, PermissionError, ValueError, IndexError)


def marked_processes(marker: str) -> set[int]:
    """Live processes whose environment holds ``marker`` (``NAME=value``)."""
    needle = marker.encode() + b"\0"  # /proc/PID/environ: entries end with NUL
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(*GONE):
                environ = Path(f"/proc/{entry}/environ").read_bytes()
                if (environ.startswith(needle) or b"\0" + needle in environ) and alive(
                    int(entry)
                ):
                    found.add(int(entry))
    return found


def descendants(roots: Iterable[int]) -> set[int]:
    """Children, grandchildren, ... of the processes ``roots`` (not the roots)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(*GONE):
                stat = Path(f"/proc/{entry}/stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
    found: set[int] = set()
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie has exited: only its parent's wait is due)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def terminate(find: Callable[[], set[int]], grace: float = 10.0) -> set[int]:
    """SIGTERM the processes ``find()`` names, wait up to ``grace`` seconds, SIGKILL
    the rest and wait up to 5 s; ``find()`` is asked again after each wait, for
    processes started meanwhile. Returns the pids still alive (none, normally)."""
    pids = find()
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if not pids:
            return set()
        for pid in pids:
            with contextlib.suppress(*GONE):
                os.kill(pid, sig)
        end = time.monotonic() + wait
        while time.monotonic() < end and any(alive(pid) for pid in pids):
            time.sleep(0.1)
        pids = {pid for pid in pids if alive(pid)} | find()
    return pids


def main(marker: str) -> None:
    """Wait for standard input to close, then stop the processes marked ``marker``."""
    sys.stdin.buffer.read()
    terminate(lambda: marked_processes(marker) - {os.getpid()})


if __name__ == "__main__":
    main(sys.argv[1])
