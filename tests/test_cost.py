"""Cost accounting: bytes, FLOPs, simulated time, and what History derives from them."""

from __future__ import annotations

import pytest
import torch

import fedlearn_lab as fl
from fedlearn_lab.cost import CostModel, forward_macs
from fedlearn_lab.history import RoundRecord
from fedlearn_lab.models import make_model
from fedlearn_lab.weights import weights_bytes


def _cost_model(**changes) -> CostModel:
    """1 GFLOP/s devices, a 100 GFLOP/s server, 50 and 100 Mbit/s links."""
    values = {"model_bytes": 10**6, "flops_per_sample": 10**9} | changes
    return CostModel(1.0, 100.0, 50.0, 100.0, **values)


def _model(name: str, shape=(64,), hidden: int = 64):
    return make_model(name, shape, 10, torch.Generator().manual_seed(0), hidden=hidden)


def test_forward_macs_counts_linear_and_conv_layers():
    assert forward_macs(_model("logreg"), (64,)) == 64 * 10
    assert forward_macs(_model("mlp"), (64,)) == 64 * 64 + 64 * 10
    # CNN on 1x8x8 with 16 channels: conv1 8*8*16*(1*9), conv2 4*4*32*(16*9),
    # fc (32*2*2) * 10.
    expected = 8 * 8 * 16 * 9 + 4 * 4 * 32 * 16 * 9 + 128 * 10
    assert forward_macs(_model("cnn", (1, 8, 8)), (1, 8, 8)) == expected


def test_forward_macs_leaves_no_hook_behind():
    model = _model("mlp")
    forward_macs(model, (64,))
    assert all(not m._forward_hooks for m in model.modules())


def test_round_cost_matches_the_documented_model():
    # 4 devices, a 1 MB model: down and up each take max(4 MB / 100 Mbit/s,
    # 1 MB / 50 Mbit/s) = 0.32 s; the slowest device trains 2 samples of 1 GFLOP:
    # 2 s; the server 1 GFLOP = 0.01 s afterwards.
    cost = _cost_model().round(2, num_sent=4, sizes=[1, 2, 0, 1], server_flops=10**9)
    assert cost.bytes_sent == cost.bytes_received == 4 * 10**6
    assert cost.device_flops == 4 * 10**9 and cost.server_flops == 10**9
    assert cost.sim_seconds == pytest.approx(0.32 + 2 + 0.01 + 0.32)


def test_round_cost_overlaps_a_server_that_computes_alongside_the_devices():
    model = _cost_model(model_bytes=0, server_alongside=True)
    cost = model.round(1, num_sent=1, sizes=[1], server_flops=10**11)
    assert cost.sim_seconds == pytest.approx(1.0)  # max(1 s, 1 s)


def test_round_cost_receives_only_from_devices_that_return():
    # 10 sent, 4 return: down max(10 MB / 100, 1 MB / 50 Mbit/s) = 0.8 s, up 0.32 s.
    cost = _cost_model().round(3, num_sent=10, sizes=[0] * 4, server_flops=0)
    assert (cost.bytes_sent, cost.bytes_received) == (10 * 10**6, 4 * 10**6)
    assert cost.sim_seconds == pytest.approx(0.8 + 0.32)


def test_round_cost_counts_a_one_off_broadcast_in_round_one_only():
    model = _cost_model(model_bytes=0, broadcast_bytes=125_000, broadcast_count=10)
    first = model.round(1, num_sent=1, sizes=[0], server_flops=0)
    assert first.bytes_sent == 1_250_000
    assert first.sim_seconds == pytest.approx(0.1)  # 10 Mbit over 100 Mbit/s
    later = model.round(2, num_sent=1, sizes=[0], server_flops=0)
    assert later.bytes_sent == 0 and later.sim_seconds == 0


def test_a_round_records_model_bytes_times_devices(digits):
    cfg = fl.FedConfig(num_devices=20, participation=0.25, rounds=2)
    fed = fl.Federation(cfg, digits)
    record = fed.step()
    model_bytes = weights_bytes(fed.state.weights)
    assert model_bytes == 4 * (64 * 64 + 64 + 64 * 10 + 10)
    assert record.bytes_sent == record.bytes_received == 5 * model_bytes
    samples = sum(len(fed.device_indices[k]) for k in record.devices)
    macs = 64 * 64 + 64 * 10
    assert record.device_flops == 6 * macs * cfg.local_epochs * samples
    assert record.server_flops == 6 * macs * cfg.server_steps * cfg.server_batch_size
    assert record.sim_seconds > 0


def test_scaffold_sends_and_receives_exactly_twice_fedavgs_bytes(digits):
    # c travels with the global model, and c_i+ - c_i with each device's weights.
    cfg = fl.FedConfig(num_devices=20, participation=0.25, rounds=3, dropout=0.3)
    fedavg = fl.run(cfg.replace(**fl.METHODS["fedavg"]), digits).history
    scaffold = fl.run(cfg.replace(**fl.METHODS["scaffold"]), digits).history
    assert [r.devices for r in scaffold] == [r.devices for r in fedavg]
    assert [r.returned for r in scaffold] == [r.returned for r in fedavg]
    assert any(len(r.returned) < len(r.devices) for r in fedavg)  # some were lost
    for plain, doubled in zip(fedavg, scaffold, strict=True):
        assert doubled.bytes_sent == 2 * plain.bytes_sent > 0
        assert doubled.bytes_received == 2 * plain.bytes_received > 0
    for name in ("fedprox", "fedadam"):  # the other remedies send only the model
        other = fl.run(cfg.replace(**fl.METHODS[name]), digits).history
        assert other.column("bytes_sent") == fedavg.column("bytes_sent")
        assert other.column("bytes_received") == fedavg.column("bytes_received")


def test_data_sharing_pays_for_the_copies_once(digits):
    cfg = fl.FedConfig(
        num_devices=20, participation=0.25, rounds=2, shared_use="data_sharing"
    )
    fed = fl.Federation(cfg, digits)
    first, second = fed.step(), fed.step()
    copy_bytes = len(fed.shared_indices) * (64 * 4 + 8)
    assert first.bytes_sent - first.bytes_received == cfg.num_devices * copy_bytes
    assert second.bytes_sent == second.bytes_received


def test_faster_links_shorten_simulated_time_only(digits):
    cfg = fl.FedConfig(num_devices=20, participation=0.25, rounds=2)
    slow = fl.run(cfg, digits).history
    fast = fl.run(cfg.replace(device_mbps=500.0, server_mbps=1000.0), digits).history
    assert fast.accuracy == slow.accuracy
    assert fast.sim_time[-1] < slow.sim_time[-1]


@pytest.mark.parametrize(
    "field", ["device_gflops", "server_gflops", "device_mbps", "server_mbps"]
)
def test_cost_fields_must_be_positive(field):
    with pytest.raises(ValueError, match=field):
        fl.FedConfig(**{field: 0})


# --- History --------------------------------------------------------------------------


def _record(
    round_idx: int, accuracy: float, sim_seconds: float, nbytes: int
) -> RoundRecord:
    return RoundRecord(
        round=round_idx, devices=(0,), num_samples=1, train_loss=1.0,
        aggregate_accuracy=accuracy, aggregate_loss=1.0, accuracy=accuracy, loss=1.0,
        server_steps=0, server_loss=float("nan"), bytes_sent=nbytes,
        bytes_received=nbytes, sim_seconds=sim_seconds,
    )  # fmt: skip


def test_history_reports_rounds_time_and_bytes_to_an_accuracy():
    history = fl.History(
        [_record(1, 0.5, 1.0, 10), _record(2, 0.85, 2.0, 10), _record(3, 0.8, 4.0, 10)]
    )
    assert history.sim_time == [1.0, 3.0, 7.0]
    assert history.cumulative("bytes_sent") == [10, 20, 30]
    assert history.rounds_to(0.8) == 2
    assert history.time_to(0.8) == 3.0
    assert history.bytes_to(0.8) == 40
    assert history.time_to(0.9) is None and history.bytes_to(0.9) is None


def test_history_csv_has_the_new_columns(tmp_path, digits):
    cfg = fl.FedConfig(
        num_devices=20, participation=0.25, rounds=1, server_schedule="feddu"
    )
    path = fl.run(cfg, digits).history.to_csv(tmp_path / "h.csv")
    header = path.read_text().splitlines()[0].split(",")
    for column in (
        "server_alpha",
        "server_tau",
        "shared_label_divergence",
        "sim_seconds",
    ):
        assert column in header
