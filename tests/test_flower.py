"""fedlearn_lab.flower: the method on Flower's engine gives the in-process results.

Tests marked ``flower`` need the extra (``make setup`` installs it); the slow ones
start Ray or real Flower processes. flwr is imported inside the tests, so collecting
this file never imports it.
"""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import tomllib
import torch

import fedlearn_lab as fl

ROOT = Path(__file__).resolve().parents[1]
flower = pytest.mark.flower


def test_importing_fedlearn_lab_does_not_import_flower():
    code = (
        "import sys, fedlearn_lab; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'flwr', 'ray'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


@flower
def test_example_app_run_config_makes_a_valid_config():
    from fedlearn_lab.flower import config_from_run_config

    app = tomllib.loads((ROOT / "examples/flower_app/pyproject.toml").read_text())
    run_config = app["tool"]["flwr"]["app"]["config"]
    cfg = config_from_run_config(run_config)
    assert (cfg.num_devices, cfg.rounds) == (
        run_config["num-devices"],
        run_config["rounds"],
    )
    assert config_from_run_config({**run_config, "rounds": 7}).rounds == 7


@flower
def test_config_path_overrides_the_field_keys(tmp_path):
    from fedlearn_lab.flower import config_from_run_config

    wanted = fl.FedConfig(num_devices=4, shared_classes=(1, 2), target_accuracy=0.9)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(wanted.to_dict()))
    got = config_from_run_config({"config-path": str(path), "num-devices": 3})
    assert got == wanted


@flower
def test_unknown_run_config_key_is_an_error_naming_it():
    from fedlearn_lab.flower import config_from_run_config

    with pytest.raises(ValueError, match="num_device"):
        config_from_run_config({"num-device": 3})


@flower
def test_history_round_trips_through_json(tmp_path, digits):
    from fedlearn_lab.flower import load_history, save_history

    history = fl.Federation(fl.FedConfig(num_devices=5, rounds=2), digits).run()
    back = load_history(save_history(history, tmp_path / "h.json"))
    assert back.records == history.records
    assert back.column("seconds") == history.column("seconds")


@flower
def test_runners_reject_bad_arguments_before_starting_anything(tmp_path):
    from fedlearn_lab.flower import run_processes, run_simulation, run_simulations

    cfg = fl.FedConfig(num_devices=2, rounds=1)
    with pytest.raises(TypeError, match="FedConfig"):
        run_simulation({"num_devices": 2})
    with pytest.raises(ValueError, match="model_outs"):
        run_simulations([cfg, cfg], model_outs=[None])
    with pytest.raises(ValueError, match="timeout"):
        run_processes(cfg, timeout=0)
    with pytest.raises(ValueError, match="round_timeout"):
        run_processes(cfg, round_timeout=-1)
    with pytest.raises(ValueError, match="mode"):
        run_processes(cfg, mode="production")
    with pytest.raises(ValueError, match="mode"):
        run_simulation(cfg, mode="production")
    with pytest.raises(ValueError, match="app_dir"):
        run_processes(cfg, app_dir=tmp_path)
    with pytest.raises(ValueError, match="dataset"):
        run_processes(cfg, dataset="mnist")
    tiny_shared = cfg.replace(shared_fraction=1e-4)
    with pytest.raises(ValueError, match="shared_fraction"):
        run_processes(tiny_shared)
    with pytest.raises(ValueError, match="shared_fraction"):
        run_simulation(tiny_shared)


# --- on Flower's Simulation Engine: one start of Ray for both experiments ---------

ONE_DEVICE = fl.FedConfig(num_devices=1, participation=1.0, rounds=3, local_epochs=2)
TEN_DEVICES = fl.FedConfig(num_devices=10, participation=0.5, rounds=15, local_epochs=1)
TO_TARGET = TEN_DEVICES.replace(target_accuracy=0.6)
# Faults and attacks: a Flower device trains alone with reference.sgd, so these run
# the reference engine (in-process and on Flower) to compare to 1e-6.
_FAULTY = fl.FedConfig(num_devices=10, participation=0.5, rounds=8, engine="reference")
FAULTS = {
    "dropout": _FAULTY.replace(dropout=0.3),
    "deadline": _FAULTY.replace(deadline=1.2),
    "sign_flip_median": _FAULTY.replace(
        malicious_fraction=0.3, attack="sign_flip", aggregator="median"
    ),
    "label_flip": _FAULTY.replace(malicious_fraction=0.3, attack="label_flip"),
    "noise": _FAULTY.replace(malicious_fraction=0.2, attack="noise"),
}
# The other remedies on the same federation: FedProx's mu travels in the config each
# device receives, SCAFFOLD's correction c - c_i in each device's own message.
# mu = 0.5 rather than the entry's 0.01, so that a lost mu would show.
REMEDIES = {
    "fedprox": _FAULTY.replace(**fl.METHODS["fedprox"]).replace(proximal_mu=0.5),
    "fedadam": _FAULTY.replace(**fl.METHODS["fedadam"]),
    "scaffold": _FAULTY.replace(**fl.METHODS["scaffold"]),
}


@dataclasses.dataclass
class Simulated:
    histories: list
    seen: list  # the records on_round received
    model_dir: Path
    seconds: float
    ray_left: set  # Ray's processes still alive 15 s after the run


def _processes_mentioning(text: str) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        try:
            if (
                entry.isdigit()
                and text.encode() in Path(f"/proc/{entry}/cmdline").read_bytes()
            ):
                found.add(int(entry))
        except OSError:
            pass
    return found


@pytest.fixture(scope="module")
def simulated(digits, tmp_path_factory):
    from fedlearn_lab.flower import run_simulations

    ray_dir = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths must fit
    model_dir = tmp_path_factory.mktemp("flower") / "one-device-model"
    seen = []
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FLWR_HOME", str(tmp_path_factory.mktemp("flwr-home")))
        started = time.perf_counter()
        histories = run_simulations(
            [ONE_DEVICE, TEN_DEVICES, TO_TARGET, *FAULTS.values(), *REMEDIES.values()],
            digits,
            on_round=seen.append,
            model_outs=[model_dir] + [None] * (2 + len(FAULTS) + len(REMEDIES)),
            backend_config={"init_args": {"_temp_dir": ray_dir}},
        )
        seconds = time.perf_counter() - started
    deadline = time.monotonic() + 15
    while (ray_left := _processes_mentioning(ray_dir)) and time.monotonic() < deadline:
        time.sleep(0.5)
    shutil.rmtree(ray_dir, ignore_errors=True)
    return Simulated(histories, seen, model_dir, seconds, ray_left)


@flower
@pytest.mark.slow
def test_one_device_flower_run_ends_with_the_in_process_weights(simulated, digits):
    fed = fl.Federation(ONE_DEVICE, digits)
    fed.run()
    model, cfg = fl.load_model(simulated.model_dir)
    assert cfg == ONE_DEVICE
    torch.testing.assert_close(dict(model.state_dict()), fed.state.weights)
    assert not torch.equal(fed.state.weights["fc1.weight"], fed.setup.model.fc1.weight)
    history = simulated.histories[0]
    assert history.rounds == [1, 2, 3]
    assert history.accuracy == pytest.approx(fed.history.accuracy, abs=1e-6)


@flower
@pytest.mark.slow
def test_ten_device_flower_simulation_reaches_the_in_process_accuracy(
    simulated, digits
):
    history = simulated.histories[1]
    reference = fl.Federation(TEN_DEVICES, digits).run()
    assert [r.devices for r in history] == [r.devices for r in reference]
    assert reference.final_accuracy > 0.8
    assert abs(history.final_accuracy - reference.final_accuracy) <= 0.03
    assert history.aggregate_accuracy == pytest.approx(
        reference.aggregate_accuracy, abs=0.03
    )
    assert all(r.seconds > 0 for r in history)
    print(
        f"\nFlower simulation: {simulated.seconds:.1f} s for "
        f"{len(simulated.seen)} rounds, "
        f"median round {sorted(history.column('seconds'))[len(history) // 2]:.3f} s"
    )


@flower
@pytest.mark.slow
def test_target_accuracy_ends_the_flower_run_with_the_in_process_one(simulated, digits):
    history = simulated.histories[2]
    reference = fl.Federation(TO_TARGET, digits).run()
    assert len(reference) < TO_TARGET.rounds
    assert history.rounds == reference.rounds
    assert history.accuracy == pytest.approx(reference.accuracy, abs=1e-6)


@flower
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FAULTS))
def test_flower_runs_faults_and_attacks_as_fl_run_does(simulated, digits, name):
    history = simulated.histories[3 + list(FAULTS).index(name)]
    expected = fl.run(FAULTS[name], digits).history
    columns = ("devices", "returned", "rejected", "failures", "kept_previous")
    for column in columns:
        assert history.column(column) == expected.column(column)
    setup = fl.Federation(FAULTS[name], digits).setup
    plans = [fl.plan_round(setup, r) for r in range(1, FAULTS[name].rounds + 1)]
    assert any(p.lost or len(p.malicious) for p in plans)  # faults did happen
    for column in ("accuracy", "aggregate_accuracy", "loss", "train_loss"):
        assert history.column(column) == pytest.approx(
            expected.column(column), abs=1e-6
        )


@flower
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REMEDIES))
def test_flower_runs_the_other_remedies_as_fl_run_does(simulated, digits, name):
    history = simulated.histories[3 + len(FAULTS) + list(REMEDIES).index(name)]
    expected = fl.run(REMEDIES[name], digits).history
    assert fl.method_of(REMEDIES[name]) == name
    for column in ("devices", "returned", "bytes_sent", "bytes_received"):
        assert history.column(column) == expected.column(column)
    for column in ("accuracy", "aggregate_accuracy", "loss", "train_loss"):
        assert history.column(column) == pytest.approx(
            expected.column(column), abs=1e-6
        )
    plain = fl.run(REMEDIES[name].replace(**fl.METHODS["fedavg"]), digits).history
    gaps = [abs(a - b) for a, b in zip(plain.loss, expected.loss, strict=True)]
    assert max(gaps) > 1e-4  # the remedy changed the run: the check can fail


@flower
@pytest.mark.slow
def test_on_round_sees_every_round_of_every_experiment(simulated):
    assert simulated.seen == [r for h in simulated.histories for r in h]
    assert len(simulated.seen) > ONE_DEVICE.rounds + TEN_DEVICES.rounds


@flower
@pytest.mark.slow
def test_simulation_leaves_no_ray_process(simulated):
    assert simulated.ray_left == set()


# --- real processes: a SuperLink and three SuperNodes on 127.0.0.1 ----------------


def _live_descendants() -> set[int]:
    from fedlearn_lab.flower.processes import _alive, _descendants

    return {pid for pid in _descendants([os.getpid()]) if _alive(pid)}


@flower
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_real_processes_run_three_rounds_and_leave_no_process(tmp_path, digits):
    from fedlearn_lab.flower import run_processes
    from fedlearn_lab.flower.processes import marked_processes

    cfg = fl.FedConfig(num_devices=3, participation=1.0, rounds=3, local_epochs=1)
    work = tmp_path / "run"
    before = _live_descendants()
    started = time.perf_counter()
    history = run_processes(
        cfg, workdir=work, model_out=tmp_path / "model", timeout=420
    )
    seconds = time.perf_counter() - started

    assert not marked_processes(str(work.resolve()))
    assert _live_descendants() <= before
    logs = {p.name for p in work.glob("*.log")}
    assert {"superlink.log", "supernode0.log", "supernode2.log", "flwr_run.log"} <= logs
    fed = fl.Federation(cfg, digits)
    fed.run()
    assert [r.devices for r in history] == [(0, 1, 2)] * 3
    assert history.accuracy == pytest.approx(fed.history.accuracy, abs=1e-6)
    model, _ = fl.load_model(tmp_path / "model")
    torch.testing.assert_close(dict(model.state_dict()), fed.state.weights)
    print(f"\nreal processes: {seconds:.1f} s for {cfg.rounds} rounds")


# --- no Flower process outlives run_processes, however it ends ---------------------

_RUN_IN_A_CHILD = """
import signal, sys
import fedlearn_lab as fl
from fedlearn_lab.flower import run_processes

signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignored
cfg = fl.FedConfig(num_devices=2, participation=1.0, rounds=100, local_epochs=1)
run_processes(cfg, workdir=sys.argv[1], timeout=float(sys.argv[2]))
"""


@flower
@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("ending", ["SIGTERM", "SIGINT", "SIGKILL", "raises"])
def test_no_flower_process_outlives_run_processes(tmp_path, ending):
    from fedlearn_lab.flower.processes import marked_processes

    work = (tmp_path / "run").resolve()
    timeout = 20 if ending == "raises" else 240  # "raises": TimeoutError mid-run
    child = subprocess.Popen(
        [sys.executable, "-c", _RUN_IN_A_CHILD, str(work), str(timeout)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # signals for the child never reach pytest
    )
    try:
        # SuperNodes are started once the SuperLink answers its health check.
        deadline = time.monotonic() + 120
        while not (work / "supernode1.log").exists() or not marked_processes(str(work)):
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the SuperLink did not come up"
            time.sleep(0.1)
        started = marked_processes(str(work))
        if ending != "raises":
            child.send_signal(getattr(signal, ending))
        _, stderr = child.communicate(timeout=120)
    finally:
        child.kill()
    expected = {
        "SIGTERM": -signal.SIGTERM,  # the signal's own effect, after the cleanup
        "SIGINT": -signal.SIGINT,  # KeyboardInterrupt, uncaught
        "SIGKILL": -signal.SIGKILL,  # no cleanup in the child: the reaper's job
        "raises": 1,
    }[ending]
    assert child.returncode == expected, stderr
    if ending == "SIGINT":
        assert "KeyboardInterrupt" in stderr and "_Signalled" not in stderr
    if ending == "raises":
        assert "TimeoutError" in stderr
    deadline = time.monotonic() + 60  # the reaper's SIGTERM grace is 10 s
    while (left := marked_processes(str(work))) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(started) >= 3  # SuperLink and two SuperNodes, at least
    assert left == set(), _processes_mentioning(str(work))
