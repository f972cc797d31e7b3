"""Flower for real: the deployment mode, failures as part of the round, a stranger's
ClientApp, and runs that only invited devices join.

Unit tests first; then Flower's Simulation Engine (one Ray start each); then real
processes on 127.0.0.1 (a SuperLink, SuperNodes, ``flwr run``), every one stopped
when the test ends, passed or failed.
"""

import ast
import importlib.util
import ipaddress
import itertools
import json
import os
import stat
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon

import fedlearn_lab as fl

ROOT = Path(__file__).resolve().parents[1]
OWN_CLIENT = ROOT / "examples" / "flower_own_client"
FAULTY_APP = ROOT / "tests" / "flower_faulty_app"
pytestmark = pytest.mark.flower


def _module(path: Path, name: str):
    """Import ``path`` as ``name``; Ray ships it to its workers by value."""
    import ray.cloudpickle

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    ray.cloudpickle.register_pickle_by_value(module)
    return module


# --- the message contract ----------------------------------------------------------


def _reply(weights, metrics):
    """What read_reply reads of a reply Message: its content."""
    from flwr.app import ArrayRecord, MetricRecord, RecordDict

    content = {"arrays": ArrayRecord(weights), "metrics": MetricRecord(metrics)}
    return types.SimpleNamespace(content=RecordDict(content))


GLOBAL = {"fc.weight": torch.zeros(3, 4), "fc.bias": torch.zeros(3)}
GOOD = {"num-examples": 6, "train-loss": 0.5, "label-counts": [1, 2, 3]}
BROKEN = {  # what is wrong -> the reason the History gives
    "a key missing": ({"fc.weight": torch.zeros(3, 4)}, GOOD, "keys"),
    "a key added": ({**GLOBAL, "extra": torch.zeros(1)}, GOOD, "keys"),
    "a wrong shape": ({**GLOBAL, "fc.bias": torch.zeros(4)}, GOOD, "shape"),
    "a wrong dtype": ({**GLOBAL, "fc.bias": torch.zeros(3).double()}, GOOD, "dtype"),
    "no num-examples": (GLOBAL, {"train-loss": 0.5}, "metrics"),
    "0 examples": (GLOBAL, {**GOOD, "num-examples": 0}, "metrics"),
    "a NaN loss": (GLOBAL, {**GOOD, "train-loss": float("nan")}, "metrics"),
    "short label counts": (GLOBAL, {**GOOD, "label-counts": [1, 5]}, "metrics"),
    "label counts off": (GLOBAL, {**GOOD, "label-counts": [1, 2, 4]}, "metrics"),
    "no label counts": (GLOBAL, {"num-examples": 6, "train-loss": 0.5}, "metrics"),
}


def test_read_reply_takes_a_reply_that_keeps_the_contract():
    from fedlearn_lab.flower.contract import read_reply

    sent = {k: v + 1 for k, v in GLOBAL.items()}
    weights, loss, report = read_reply(
        _reply(sent, GOOD), GLOBAL, num_classes=3, label_counts=True
    )
    torch.testing.assert_close(weights, sent)
    assert (loss, report.num_examples, report.label_counts) == (0.5, 6, (1, 2, 3))
    nan = {k: torch.full_like(v, float("nan")) for k, v in GLOBAL.items()}
    read_reply(_reply(nan, GOOD), GLOBAL, num_classes=3, label_counts=True)  # screened


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_read_reply_refuses_a_broken_reply_with_its_reason(case):
    from fedlearn_lab.flower.contract import Refused, read_reply

    weights, metrics, reason = BROKEN[case]
    with pytest.raises(Refused) as refused:
        read_reply(_reply(weights, metrics), GLOBAL, num_classes=3, label_counts=True)
    assert refused.value.reason == reason


# --- what a deployed server knows ----------------------------------------------------


def test_deployed_server_knows_the_devices_only_by_their_reports(digits):
    from fedlearn_lab.flower.contract import Report
    from fedlearn_lab.flower.deploy import server_data_of, server_setup

    cfg = fl.FedConfig(num_devices=4, **fl.METHODS["feddu"])
    lab = fl.Federation(cfg, digits).setup
    server = server_setup(cfg, server_data_of(lab))
    assert len(server.data.y_train) == len(lab.shared_indices)  # only the shared data
    assert torch.equal(server.data.x_test, digits.x_test)
    assert server.train_sizes == [0, 0, 0, 0] and server.shared_label_divergence is None
    torch.testing.assert_close(
        server.initial_state().weights, lab.initial_state().weights
    )
    for k in (0, 2):
        counts = tuple(int(c) for c in lab.label_counts[k])
        server.reports[k] = Report(lab.device_sizes[k], counts)
    assert server.train_sizes == [lab.device_sizes[0], 0, lab.device_sizes[2], 0]
    prior = lab.label_counts[[0, 2]].sum(0) / lab.label_counts[[0, 2]].sum()
    np.testing.assert_allclose(server.label_prior, prior)


@pytest.mark.parametrize(
    "setting",
    [
        {"dropout": 0.2},
        {"deadline": 1.5},
        {"malicious_fraction": 0.2},
        {"shared_use": "data_sharing"},
    ],
)
def test_deployment_refuses_what_only_a_lab_can_simulate(setting, digits):
    from fedlearn_lab.flower import run_processes, run_simulation

    cfg = fl.FedConfig(num_devices=4, rounds=1, **setting)
    with pytest.raises(ValueError, match=next(iter(setting))):
        run_processes(cfg, mode="deployment")
    with pytest.raises(ValueError, match=next(iter(setting))):
        run_simulation(cfg, digits, mode="deployment")


def test_data_files_hold_the_lab_split(tmp_path, digits):
    from fedlearn_lab.flower.deploy import (
        device_file,
        load_device_file,
        load_server_data,
        write_data_files,
    )

    cfg = fl.FedConfig(num_devices=5, shared_fraction=0.1)
    folder = write_data_files(cfg, digits, tmp_path / "data")
    setup = fl.Federation(cfg, digits).setup
    for k, idx in enumerate(setup.device_indices):
        x, y = load_device_file(folder / device_file(k))
        assert torch.equal(x, digits.x_train[idx]) and torch.equal(
            y, digits.y_train[idx]
        )
    server = load_server_data(folder / "server.npz")
    assert torch.equal(server.y_train, setup.shared_data[1])
    assert torch.equal(server.x_test, digits.x_test)
    assert server.num_classes == digits.num_classes
    with pytest.raises(FileExistsError, match="server.npz"):
        write_data_files(cfg, digits, folder)  # nothing is overwritten


def test_a_bad_device_file_is_an_error_naming_it(tmp_path):
    from fedlearn_lab.flower.deploy import load_device_file

    np.savez(tmp_path / "a.npz", x=np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"a\.npz lacks the arrays \['y'\]"):
        load_device_file(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", x=np.zeros((3, 2)), y=np.array([0.5, 1, 2]))
    with pytest.raises(ValueError, match="integer labels"):
        load_device_file(tmp_path / "b.npz")


# --- keys and certificates -----------------------------------------------------------


def test_run_keys_a_ca_a_loopback_certificate_and_p384_node_keys(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key
    from cryptography.x509.verification import PolicyBuilder, Store

    from fedlearn_lab.flower.security import make_keys

    keys = make_keys(tmp_path / "keys")
    ca = x509.load_pem_x509_certificate(keys.ca.read_bytes())
    server = x509.load_pem_x509_certificate(keys.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    # The strict checks of RFC 5280 (key usages, key identifiers, the IP named):
    loopback = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
    PolicyBuilder().store(Store([ca])).build_server_verifier(loopback).verify(
        server, []
    )
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert "127.0.0.1" in {
        str(ip) for ip in names.value.get_values_for_type(x509.IPAddress)
    }
    private, public = keys.node("supernode0")
    key = load_ssh_private_key(private.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert public.read_text().startswith("ecdsa-sha2-nistp384 ")
    for secret in (private, keys.server_key, keys.folder / "ca.key"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert keys.node("supernode0") == (private, public)  # made once
    with pytest.raises(FileExistsError):
        make_keys(keys.folder)


def test_a_run_never_hands_out_a_port_twice(tmp_path, monkeypatch):
    from fedlearn_lab.flower import processes

    offered = iter([5001, 5002, 5001, 5002, 5003])  # the system may offer one again
    monkeypatch.setattr(processes, "_free_port", lambda: next(offered))
    flower = processes.FlowerProcesses(tmp_path)
    assert [flower._new_port() for _ in range(3)] == [5001, 5002, 5003]


# --- a stranger's ClientApp ----------------------------------------------------------


def test_own_client_example_is_written_against_flower_alone():
    tree = ast.parse((OWN_CLIENT / "client_app.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    assert imported == {"pathlib", "numpy", "torch", "flwr"}
    code = (
        "import runpy, sys; runpy.run_path(sys.argv[1]); "
        "print(sorted(m for m in sys.modules if m.startswith('fedlearn')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(OWN_CLIENT / "client_app.py")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]"


# --- on Flower's Simulation Engine ---------------------------------------------------


def _ray_dir() -> dict:
    return {"init_args": {"_temp_dir": tempfile.mkdtemp(prefix="ray-")}}


FEDDU = fl.FedConfig(num_devices=10, participation=0.5, rounds=4, **fl.METHODS["feddu"])


def test_deployed_feddu_uses_the_label_counts_devices_report(digits):
    """The oracle: P is the label distribution of the devices that reported so far,
    D(P't) the Jensen-Shannon divergence (scipy's) of the aggregated devices'."""
    from fedlearn_lab.flower import run_simulation

    history = run_simulation(
        FEDDU, digits, mode="deployment", backend_config=_ray_dir()
    )
    lab = fl.Federation(FEDDU, digits)
    expected = lab.run()
    counts, seen = lab.setup.label_counts, set()
    assert history.column("devices") == expected.column("devices")
    assert history.column("num_samples") == expected.column("num_samples")
    for record in history:
        assert record.failures == ()
        seen |= set(record.devices)
        q = counts[list(record.devices)].sum(0)
        p = counts[sorted(seen)].sum(0)
        oracle = jensenshannon(q / q.sum(), p / p.sum(), base=2) ** 2
        assert record.sampled_label_divergence == pytest.approx(oracle, abs=1e-9)
    assert seen != set(range(FEDDU.num_devices)) or len(history) > 1
    assert history.final_accuracy > 0.7


FAULTS = {1: "raise@2", 2: "nan@1", 3: "keys@2", 4: "shape@3", 5: "metrics@1"}
FAULTS_SEEN = {  # round -> the History's failures
    1: ((2, "non-finite"), (5, "metrics")),
    2: ((1, "error"), (3, "keys")),
    3: ((4, "shape"),),
}


def test_failing_devices_are_part_of_the_round(digits):
    from fedlearn_lab.flower import client_app, run_simulation

    faulty = _module(FAULTY_APP / "client_app.py", "flower_faulty_client")
    devices = faulty.with_faults(client_app(digits), faulty.by_device(FAULTS))
    cfg = fl.FedConfig(num_devices=6, participation=1.0, rounds=3)
    history = run_simulation(
        cfg, digits, mode="deployment", devices=devices, backend_config=_ray_dir()
    )
    assert {r.round: r.failures for r in history} == FAULTS_SEEN
    for record in history:
        failed = {k for k, _ in record.failures}
        lost = {k for k, why in record.failures if why == "error"}
        assert set(record.returned) == set(range(6)) - lost
        assert set(record.rejected) == failed - lost
        assert not record.kept_previous and np.isfinite(record.accuracy)
    assert history.final_accuracy > 0.7


def test_a_strangers_client_app_runs_with_the_server_adjustment(tmp_path, digits):
    from fedlearn_lab.flower import run_simulation
    from fedlearn_lab.flower.deploy import write_data_files

    own = _module(OWN_CLIENT / "client_app.py", "flower_own_client")
    cfg = fl.FedConfig(
        num_devices=6, participation=0.5, rounds=3, **fl.METHODS["feddu"]
    )
    folder = write_data_files(cfg, digits, tmp_path / "data")
    history = run_simulation(
        cfg,
        digits,
        mode="deployment",
        devices=own.make_app(folder),
        backend_config=_ray_dir(),
    )
    expected = fl.run(cfg, digits).history
    assert [r.failures for r in history] == [()] * 3
    assert history.column("devices") == expected.column("devices")
    # Its node ids, not partition ids, name the devices (it answers no query):
    # each round's count is that of some 3 of the 6 partitions.
    sizes = fl.Federation(cfg, digits).setup.device_sizes
    possible = {sum(c) for c in itertools.combinations(sizes, 3)}
    assert set(history.column("num_samples")) <= possible
    assert all(r.sampled_label_divergence is not None for r in history)
    assert sum(history.column("server_steps")) > 0  # FedDU adjusted
    assert history.final_accuracy > 0.7


# --- real processes ------------------------------------------------------------------


def _live(work: Path) -> set[int]:
    from fedlearn_lab.flower.processes import marked_processes

    return marked_processes(str(work.resolve()))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_only_invited_devices_join_a_deployment(tmp_path, digits):
    """TLS and SuperNode authentication: three registered devices run a deployment;
    one with an unknown key is refused, one without the CA cannot connect."""
    from fedlearn_lab.flower.deploy import SERVER_FILE, device_file, write_data_files
    from fedlearn_lab.flower.processes import FlowerProcesses

    cfg = fl.FedConfig(
        num_devices=3, participation=1.0, rounds=2, **fl.METHODS["feddu"]
    )
    work = tmp_path / "run"
    data = write_data_files(cfg, digits, tmp_path / "data")
    started = time.perf_counter()
    with FlowerProcesses(work, secure=True) as flower:
        deadline = time.monotonic() + 500
        flower.start_superlink(deadline)
        stranger = flower.start_supernode(
            "stranger", f'data-path="{data / device_file(0)}"', key="unknown"
        )
        no_ca = flower.start_supernode(
            "no_ca", f'data-path="{data / device_file(1)}"', ca=False
        )
        for k in range(3):
            node = f'device-id={k} data-path="{data / device_file(k)}"'
            flower.start_supernode(f"supernode{k}", node)
        history = flower.run(
            cfg,
            ROOT / "examples" / "flower_app",
            {"mode": "deployment", "server-data": str(data / SERVER_FILE)},
            deadline,
        )
        assert stranger.wait(timeout=240) != 0 and no_ca.wait(timeout=240) != 0
        nodes = json.loads(
            flower._flwr(
                "supernode", "ls", "lab", "--format", "json", timeout=60
            ).stdout
        )
    seconds = time.perf_counter() - started
    assert not _live(work)
    assert [r.returned for r in history] == [(0, 1, 2)] * 2
    assert "Failed to activate SuperNode" in (work / "stranger.log").read_text()
    assert "CERTIFICATE_VERIFY_FAILED" in (work / "no_ca.log").read_text()
    online = [n for n in nodes["nodes"] if n["status"] == "online"]
    assert len(online) == 3
    config = (work / "cli" / "config.toml").read_text()
    assert "insecure" not in config and "root-certificates" in config
    print(f"\nauthenticated deployment: {seconds:.1f} s, {cfg.rounds} rounds")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_device_that_raises_and_one_that_is_killed_are_named(tmp_path):
    """Real processes: device 1's ClientApp raises in round 2, device 3's SuperNode
    is killed after round 1; the run finishes and the History names both."""
    from fedlearn_lab.flower.processes import FlowerProcesses

    cfg = fl.FedConfig(num_devices=4, participation=1.0, rounds=2)
    work = tmp_path / "run"
    result = {}
    started = time.perf_counter()
    with FlowerProcesses(work) as flower:
        deadline = time.monotonic() + 500
        flower.start_superlink(deadline)
        for k in range(4):
            fault = ' fault="raise@2"' if k == 1 else ""
            flower.start_supernode(f"supernode{k}", f"device-id={k}{fault}")
        run = threading.Thread(
            target=lambda: result.update(
                history=flower.run(
                    cfg, FAULTY_APP, {"mode": "lab", "round-timeout": 60.0}, deadline
                )
            )
        )
        run.start()
        while run.is_alive() and not (work / "history.json").exists():
            time.sleep(0.2)  # rewritten after each round
        flower.kill("supernode3")
        run.join()
    seconds = time.perf_counter() - started
    assert not _live(work)
    first, second = result["history"]
    assert first.returned == (0, 1, 2, 3) and first.failures == ()
    failures = dict(second.failures)
    assert failures[1] == "error" and failures[3] in ("timeout", "error")
    assert 0 in second.returned and not second.kept_previous
    print(f"\nraise + kill: {seconds:.1f} s; round 2 failures {second.failures}")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_strangers_client_app_runs_as_real_processes(tmp_path):
    from fedlearn_lab.flower import run_processes

    cfg = fl.FedConfig(
        num_devices=3, participation=1.0, rounds=2, **fl.METHODS["feddu"]
    )
    work = tmp_path / "run"
    started = time.perf_counter()
    history = run_processes(
        cfg, mode="deployment", app_dir=OWN_CLIENT, workdir=work, timeout=500
    )
    seconds = time.perf_counter() - started
    assert not _live(work)
    assert [r.failures for r in history] == [()] * 2
    assert all(r.sampled_label_divergence is not None for r in history)
    assert (work / "keys" / "ca.pem").is_file()  # deployment is secure by default
    assert history.final_accuracy > 0.6
    print(f"\nown ClientApp, real processes: {seconds:.1f} s")
    assert os.environ.get("FEDLEARN_FLOWER_RUN") is None
