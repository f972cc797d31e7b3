import csv
import subprocess
import sys

import pytest
import torch

import fedlearn_lab as fl
from fedlearn_lab import scaffold
from fedlearn_lab.reference import evaluate
from fedlearn_lab.rounds import train_device, train_returned


def test_one_device_full_batch_step_equals_centralized_sgd(digits):
    cfg = fl.FedConfig(
        num_devices=1,
        participation=1.0,
        local_epochs=1,
        batch_size=10_000,
        shared_fraction=0.0,
        server_steps=0,
        rounds=1,
        local_lr=0.3,
    )
    fed = fl.Federation(cfg, digits)
    model = fed.publish()  # the initial global model
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.local_lr)
    loss = torch.nn.functional.cross_entropy(model(digits.x_train), digits.y_train)
    loss.backward()
    optimizer.step()
    fed.step()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(fed.state.weights[name], value, rtol=1e-5, atol=1e-6)


def test_without_server_steps_accuracy_equals_aggregate_accuracy(digits):
    hist = fl.Federation(fl.FedConfig(server_steps=0, rounds=5), digits).run()
    assert hist.accuracy == hist.aggregate_accuracy
    assert all(r.server_steps == 0 for r in hist)


def test_round_record_describes_the_round(digits):
    cfg = fl.FedConfig(num_devices=20, participation=0.25, rounds=2)
    fed = fl.Federation(cfg, digits)
    rec = fed.step()
    assert rec.round == 1 and len(rec.devices) == 5 and len(set(rec.devices)) == 5
    assert rec.num_samples == sum(len(fed.device_indices[k]) for k in rec.devices)
    assert rec.server_steps == cfg.server_steps and rec.seconds > 0
    acc, loss = evaluate(
        fed.setup.model, fed.state.weights, digits.x_test, digits.y_test
    )
    assert (rec.accuracy, rec.loss) == (acc, loss)


def test_default_config_reaches_090_on_digits(digits):
    result = fl.run(fl.FedConfig(), digits)
    assert result.history.final_accuracy >= 0.90
    assert len(result.device_accuracy) == fl.FedConfig().num_devices


def test_target_accuracy_ends_the_run_early(digits):
    hist = fl.Federation(fl.FedConfig(target_accuracy=0.6), digits).run()
    assert hist.accuracy[-1] >= 0.6 > max(hist.accuracy[:-1], default=0)
    assert len(hist) < fl.FedConfig().rounds


def test_stop_keeps_the_rounds_done_and_run_resumes(digits):
    fed = fl.Federation(fl.FedConfig(rounds=5), digits)
    fed.run(on_round=lambda rec: fed.stop() if rec.round == 2 else None)
    assert len(fed.history) == 2
    fed.run()
    assert fed.history.rounds == [1, 2, 3, 4, 5]
    assert (
        fed.history.records
        == fl.Federation(fl.FedConfig(rounds=5), digits).run().records
    )


def test_divergence_names_the_round_and_suggests_a_smaller_learning_rate(digits):
    fed = fl.Federation(fl.FedConfig(server_lr=1e30, rounds=10), digits)
    with pytest.raises(
        fl.DivergedError, match=r"round 1 diverged.*server_lr, now 1e\+30\)"
    ):
        fed.run()
    assert len(fed.history) == 0


def test_divergence_mid_run_keeps_the_earlier_rounds(digits):
    fed = fl.Federation(fl.FedConfig(rounds=10), digits)
    fed.run(on_round=lambda rec: fed.stop() if rec.round == 2 else None)
    blown = {k: v.clone() for k, v in fed.state.weights.items()}
    blown["fc1.weight"][0, 0] = float("inf")  # as if the last update had overflowed
    fed.state = fl.ServerState(fed.round, blown)
    with pytest.raises(
        fl.DivergedError, match=r"round 3 diverged.*keeps rounds 1\.\.2"
    ):
        fed.run()
    assert fed.history.rounds == [1, 2]


def test_same_seed_gives_identical_history_and_other_seed_does_not(digits):
    cfg = fl.FedConfig(rounds=4)
    a = fl.Federation(cfg, digits).run()
    b = fl.Federation(cfg, digits).run()
    c = fl.Federation(cfg.replace(seed=1), digits).run()
    assert a == b
    assert [r.devices for r in a] != [r.devices for r in c]


def test_history_is_bit_identical_across_processes(digits, tmp_path):
    code = (
        "import torch, fedlearn_lab as fl; torch.set_num_threads(1);"
        "fl.Federation(fl.FedConfig(rounds=3), fl.load_digits()).run()"
        f".to_csv({str(tmp_path / 'b.csv')!r})"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    fl.Federation(fl.FedConfig(rounds=3), digits).run().to_csv(tmp_path / "a.csv")

    def without_seconds(path):
        with path.open() as f:
            return [
                {k: v for k, v in row.items() if k != "seconds"}
                for row in csv.DictReader(f)
            ]

    assert without_seconds(tmp_path / "a.csv") == without_seconds(tmp_path / "b.csv")


@pytest.mark.slow
@pytest.mark.parametrize("classes_per_device", [1, 2])
def test_server_adjustment_beats_fedavg_on_strongly_non_iid_digits(
    digits, classes_per_device
):
    cfg = fl.FedConfig(partition="shards", skew=classes_per_device, rounds=20)

    def mean_final(steps):
        runs = [
            fl.Federation(cfg.replace(seed=s, server_steps=steps), digits).run()
            for s in range(3)
        ]
        return sum(h.final_accuracy for h in runs) / 3

    assert mean_final(5) > mean_final(0) + 0.02


def test_history_exports(digits, tmp_path):
    hist = fl.Federation(fl.FedConfig(rounds=2), digits).run()
    path = hist.to_csv(tmp_path / "h.csv")
    lines = path.read_text().splitlines()
    assert lines[0].startswith("round,devices") and len(lines) == 3
    frame = hist.to_dataframe()
    assert list(frame["accuracy"]) == hist.accuracy
    assert hist.rounds_to(0.0) == 1 and hist.rounds_to(1.01) is None
    assert "2 rounds" in repr(hist)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"dropout": 0.3, "deadline": 1.5},
        {"malicious_fraction": 0.4, "attack": "label_flip"},
        {"malicious_fraction": 0.4, "attack": "noise"},
        {"shared_use": "data_sharing", "malicious_fraction": 0.4, "attack": "scale"},
        {"proximal_mu": 0.5},
        {"scaffold": True},
    ],
)
def test_one_device_alone_sends_its_row_of_the_round(digits, changes):
    # A Flower ClientApp runs train_device; the in-process round, train_returned.
    cfg = fl.FedConfig(
        num_devices=10, participation=0.6, local_epochs=2, engine="reference", seed=3
    )
    fed = fl.Federation(cfg.replace(**changes), digits)
    fed.step()  # SCAFFOLD's controls are no longer zero
    setup, state = fed.setup, fed.state
    for round_idx in (2, 3):
        plan = fl.plan_round(setup, round_idx)
        stacked, losses = train_returned(setup, state, plan)
        rows = None
        if setup.cfg.scaffold:
            rows = scaffold.corrections(*state.controls, plan.returned)
            assert max(v.abs().max().item() for v in rows.values()) > 0
        for row, device in enumerate(plan.returned):
            correction = None if rows is None else {k: v[row] for k, v in rows.items()}
            sent, loss = train_device(
                setup, state.weights, plan, int(device), correction
            )
            for name, value in sent.items():
                assert torch.equal(value, stacked[name][row])
            assert loss == losses[row].item()
