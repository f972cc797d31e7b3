"""Time federated rounds: the reference per-device loop against the vectorized engine.

    python benchmarks/bench_rounds.py [--repeats 5] [--threads 1] [--quick]
    python benchmarks/bench_rounds.py --workloads W W+fedprox W+scaffold --no-flower
    python benchmarks/bench_rounds.py --profile W   # where the time goes

Workload W (issue 3): scikit-learn digits over 100 devices (Dirichlet alpha = 0.5),
10 devices per round, 1 local epoch of SGD (lr 0.05, batch 16), MLP 64-64-10, FedAvg,
then 5 server steps (batch 32, lr 0.05) on a 5% class-balanced shared dataset;
30 rounds. Also W with 100 devices per round; W with FedProx's proximal term
(``METHODS["fedprox"]``'s mu, 0.01) or SCAFFOLD's control variates added to every
local step, all else equal (server steps included); a scaling row (MNIST-sized
Gaussian blobs, 60,000 x 784, over 1,000 devices, 10% per round), and the default
playground run ``fl.run(fl.FedConfig())`` (import excluded).

Every variant runs in a fresh subprocess, so its peak RSS is its own. After one
warm-up run, ``--repeats`` runs of 30 rounds are timed: ms/round is the median
round (wall clock, and CPU time of this process), "run s" the median run (setup
plus 30 rounds; imports and data loading excluded); "e2e s" is the warm-up run
counted from the start of the process, imports included. Peak RSS is the
process's own (for Flower, without its Ray workers). All rows come from one
invocation: on a shared machine, compare ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

STARTED = time.perf_counter()  # a worker's "e2e s" counts from here, imports included
WORKLOADS = {  # name: label in the table
    "W": "W: digits, 10 of 100 devices per round",
    "W100": "W, 100 of 100 devices per round",
    "W+fedprox": "W with FedProx (mu 0.01)",
    "W+scaffold": "W with SCAFFOLD",
    "scale": "60k x 784 blobs, 100 of 1000 devices per round",
    "default": "fl.run(fl.FedConfig()): the playground default",
}
ENGINES = ("reference", "vectorized")


def _config(workload: str, engine: str, quick: bool):
    import fedlearn_lab as fl

    common = dict(
        num_devices=100,
        participation=0.1,
        partition="dirichlet",
        skew=0.5,
        local_epochs=1,
        local_lr=0.05,
        batch_size=16,
        model="mlp",
        hidden=64,
        shared_fraction=0.05,
        server_steps=5,
        server_batch_size=32,
        server_lr=0.05,
        rounds=5 if quick else 30,
        seed=0,
        engine=engine,
    )
    if workload == "W100":
        common["participation"] = 1.0
    if workload == "W+fedprox":
        common["proximal_mu"] = fl.METHODS["fedprox"]["proximal_mu"]
    if workload == "W+scaffold":
        common["scaffold"] = True
    if workload == "scale":
        common["num_devices"] = 1000
    return fl.FedConfig(**common)


def _data(workload: str, quick: bool):
    import numpy as np

    import fedlearn_lab as fl

    if workload != "scale":
        return fl.load_digits()
    # MNIST-sized: 60,000 training and 10,000 test rows of 784 features, 10 classes,
    # each class a Gaussian blob around its own random centre.
    num_rows = 7_000 if quick else 70_000
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, num_rows)
    x = rng.standard_normal((num_rows, 784), dtype=np.float32)
    x += 0.15 * rng.standard_normal((10, 784), dtype=np.float32)[y]
    return fl.from_arrays(x, y, test_fraction=1 / 7, name="blobs")


class Run(NamedTuple):
    """One run of all rounds: seconds per round (wall clock and CPU), the seconds of
    the whole run (setup included), and the final accuracy."""

    wall: list[float]
    cpu: list[float]
    seconds: float
    accuracy: float


def _timed_run(fl, cfg, data) -> Run:
    start = time.perf_counter()
    fed = fl.Federation(cfg, data)
    wall, cpu = [], []
    for _ in range(cfg.rounds):
        round_start, cpu_start = time.perf_counter(), time.process_time()
        fed.step()
        wall.append(time.perf_counter() - round_start)
        cpu.append(time.process_time() - cpu_start)
    return Run(wall, cpu, time.perf_counter() - start, fed.history[-1].accuracy)


def _run_flower(fl, cfg, data) -> Run:
    """HOOK(flower): the same workload on Flower's Simulation Engine (Ray), through
    ``fedlearn_lab.flower``; its first round waits for Ray to start. Flower's work
    runs in other processes, so its CPU time per round is not measured (NaN)."""
    from fedlearn_lab.flower.simulation import run_simulation

    start = time.perf_counter()
    history = run_simulation(cfg, data)
    wall = [r.seconds for r in history]
    seconds = time.perf_counter() - start
    return Run(wall, [float("nan")] * len(wall), seconds, history[-1].accuracy)


def worker(
    variant: str, workload: str, repeats: int, threads: int, quick: bool
) -> dict:
    """Measure one variant on one workload in this (fresh) process."""
    import torch

    import fedlearn_lab as fl

    torch.set_num_threads(threads)
    if workload == "default":
        start = time.perf_counter()
        result = fl.run(fl.FedConfig(engine=variant))
        seconds = time.perf_counter() - start
        return {"run_s": seconds, "accuracy": result.history[-1].accuracy, **_rss()}
    data = _data(workload, quick)
    cfg = _config(workload, variant if variant in ENGINES else "vectorized", quick)
    run = _run_flower if variant == "flower" else _timed_run
    warmup = run(fl, cfg, data)
    e2e = time.perf_counter() - STARTED
    repeats = 0 if variant == "flower" else repeats  # each Flower run restarts Ray
    runs = [run(fl, cfg, data) for _ in range(repeats)] or [warmup]
    return {
        "ms_per_round": 1e3 * statistics.median(s for r in runs for s in r.wall),
        "cpu_ms_per_round": 1e3 * statistics.median(s for r in runs for s in r.cpu),
        "first_round_ms": 1e3 * warmup.wall[0],
        "run_s": statistics.median(r.seconds for r in runs),
        "e2e_s": e2e,
        "accuracy": warmup.accuracy,
        **_rss(),
    }


def profile(workload: str, threads: int, quick: bool) -> None:
    """Print where a vectorized run of ``workload`` spends its CPU time."""
    import cProfile
    import pstats

    import torch

    import fedlearn_lab as fl

    torch.set_num_threads(threads)
    data, cfg = _data(workload, quick), _config(workload, "vectorized", quick)
    _timed_run(fl, cfg, data)  # warm up
    profiler = cProfile.Profile(time.process_time)
    profiler.runcall(_timed_run, fl, cfg, data)
    stats = pstats.Stats(profiler).sort_stats("cumulative")
    print(f"CPU profile of one vectorized run of {workload} ({cfg.rounds} rounds):")
    stats.print_stats(r"fedlearn_lab/(?!__init__)", 25)


def _flower_ready() -> bool:
    """flwr is installed, and this checkout has fedlearn_lab.flower."""
    import fedlearn_lab

    flower = Path(fedlearn_lab.__file__).parent / "flower"
    return importlib.util.find_spec("flwr") is not None and flower.is_dir()


def _rss() -> dict:
    return {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _measure(variant: str, workload: str, args: argparse.Namespace) -> dict:
    """Run :func:`worker` in a fresh interpreter and return its figures."""
    command = [
        sys.executable, __file__, "--worker", variant, workload,
        "--repeats", str(args.repeats), "--threads", str(args.threads),
    ] + (["--quick"] if args.quick else [])  # fmt: skip
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    """Print the table and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--quick", action="store_true", help="5 rounds, less data")
    parser.add_argument(
        "--profile", choices=[w for w in WORKLOADS if w != "default"],
        help="instead of the table, profile the vectorized engine on one workload",
    )  # fmt: skip
    parser.add_argument(
        "--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS),
        help="the rows to measure (default: all)",
    )  # fmt: skip
    parser.add_argument("--no-flower", action="store_true", help="no Flower row")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(*args.worker, args.repeats, args.threads, args.quick)))
        return
    if args.profile:
        profile(args.profile, args.threads, args.quick)
        return

    variants = list(ENGINES)
    wants_flower = "W" in args.workloads and not args.no_flower
    if wants_flower and _flower_ready():
        variants.append("flower")  # HOOK(flower): see _run_flower
    elif wants_flower:
        print("note: flwr or fedlearn_lab.flower is not installed: no Flower row\n")
    workloads = {w: label for w, label in WORKLOADS.items() if w in args.workloads}
    print(
        f"torch threads {args.threads}, {args.repeats} timed runs"
        f"{' (--quick: 5 rounds)' if args.quick else ''}. ms/round: median wall "
        "clock; run s: setup + all rounds, imports excluded; e2e s: with imports\n"
    )
    print(_row(["workload", "variant", *(title for title, _, _ in COLUMNS)]))
    print(_row(["---"] * (2 + len(COLUMNS))))
    results = {}
    for workload, label in workloads.items():
        for variant in variants if workload == "W" else ENGINES:
            figures = results[workload, variant] = _measure(variant, workload, args)
            print(_row([label, variant, *_cells(figures)]), flush=True)
    print("\nspeed-up of vectorized (reference / vectorized), and its peak RSS:")
    for workload, label in workloads.items():
        ref, vec = results[workload, "reference"], results[workload, "vectorized"]
        speedups = ", ".join(
            f"{title} {ref[key] / vec[key]:.1f}x"
            for title, key, _ in COLUMNS
            if key in ("ms_per_round", "cpu_ms_per_round", "run_s") and key in vec
        )
        rss = vec["peak_rss_mib"] / ref["peak_rss_mib"]
        print(f"  {label}: {speedups}; RSS {rss:.2f} of the reference's")
    if ("W", "flower") in results:
        flower, vec = results["W", "flower"], results["W", "vectorized"]
        print(
            f"Flower / vectorized on W: per round "
            f"{flower['ms_per_round'] / vec['ms_per_round']:.0f}x, "
            f"run {flower['run_s'] / vec['run_s']:.0f}x, "
            f"end to end with imports {flower['e2e_s'] / vec['e2e_s']:.0f}x"
        )


COLUMNS = [  # (title, key, format)
    ("ms/round", "ms_per_round", "{:.2f}"),
    ("CPU ms/round", "cpu_ms_per_round", "{:.2f}"),
    ("1st round ms", "first_round_ms", "{:.1f}"),
    ("run s", "run_s", "{:.2f}"),
    ("e2e s", "e2e_s", "{:.2f}"),
    ("accuracy", "accuracy", "{:.4f}"),
    ("peak RSS MiB", "peak_rss_mib", "{:.0f}"),
]


def _cells(figures: dict) -> list[str]:
    return [fmt.format(figures[k]) if k in figures else "" for _, k, fmt in COLUMNS]


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


if __name__ == "__main__":
    main()
