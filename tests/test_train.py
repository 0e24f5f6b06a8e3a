"""train: the loop learns, is deterministic, stops on divergence, and tracks everything."""

import csv
import json
import math
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import CLI, declared_params, train_params, write_params
from fashion_mlp.cli import app
from fashion_mlp.errors import PipelineError
from fashion_mlp.model import build_mlp, load_checkpoint
from fashion_mlp.params import ModelSpec, TrainParams
from fashion_mlp.preprocess import Split, preprocess
from fashion_mlp.train import METRIC_KEYS, fit, make_optimizer, make_schedule, resolve_device

SPEC = ModelSpec(hidden=[32], activation="relu")


@pytest.fixture
def splits(tmp_path, synthetic_raw) -> tuple[Split, Split]:
    source, _ = synthetic_raw
    data = preprocess(source, tmp_path / "processed")
    return data["train"], data["test"]


def run_fit(splits, params, **callbacks):
    generator = torch.Generator().manual_seed(params.seed)
    model = build_mlp(SPEC, params.init_std, generator)
    return model, fit(model, *splits, params, generator, **callbacks)


def test_loss_falls_when_overfitting_one_small_batch():
    images = torch.randint(0, 256, (32, 28, 28), dtype=torch.uint8)
    batch = Split(images=images, labels=torch.arange(32) % 10)
    _, history = run_fit((batch, batch), train_params(epochs=100, lr=0.1, init_std=0.1))
    assert history[-1]["train_loss"] < 0.1 * history[0]["train_loss"]
    assert history[-1]["train_acc"] == 1.0


def test_learns_the_synthetic_classes_and_reports_every_metric(splits):
    _, history = run_fit(splits, train_params(epochs=5))
    assert [row["epoch"] for row in history] == [1, 2, 3, 4, 5]
    assert all(set(row) == {"epoch", *METRIC_KEYS} for row in history)
    assert history[-1]["test_acc"] >= 0.9
    assert history[-1]["train_loss"] < history[0]["train_loss"]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_same_seed_gives_identical_weights_and_metrics(splits, optimizer):
    params = train_params(optimizer=optimizer, lr=0.01 if optimizer == "adam" else 0.5)
    first_model, first = run_fit(splits, params)
    second_model, second = run_fit(splits, params)
    strip = [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in first]
    assert strip == [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in second]
    for a, b in zip(first_model.parameters(), second_model.parameters(), strict=True):
        assert torch.equal(a, b)
    _, other_seed = run_fit(splits, train_params(optimizer=optimizer, seed=1, lr=params.lr))
    assert other_seed[0]["train_loss"] != first[0]["train_loss"]


def test_cosine_schedule_decays_the_learning_rate_to_zero():
    params = train_params(lr_schedule="cosine", epochs=4)
    optimizer = make_optimizer(build_mlp(SPEC, 0.01, torch.Generator()), params)
    schedule = make_schedule(optimizer, params)
    rates = []
    for _ in range(params.epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    expected = [0.5 * (1 + math.cos(math.pi * epoch / 4)) / 2 for epoch in range(4)]
    assert rates == pytest.approx(expected)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0)
    assert make_schedule(optimizer, train_params()) is None


@pytest.mark.parametrize(
    ("lr", "loss"), [(1e9, "nan"), (1000.0, r"\d\.\d+e\+\d+")], ids=["nan", "exploded"]
)
def test_divergence_stops_naming_the_epoch_and_logs_no_nan(splits, lr, loss):
    seen = []
    expected = rf"training diverged in epoch 1: train loss is {loss}, a uniform guess scores 2.30"
    with pytest.raises(PipelineError, match=expected):
        run_fit(splits, train_params(lr=lr, init_std=1.0), on_epoch_end=seen.append)
    assert seen == []


def test_cli_train_writes_outputs_and_tracks_the_run_in_mlflow(workdir, params):
    import mlflow

    params["models"]["mlp2"]["lr"] = 0.25
    write_params(workdir / "params.yaml", declared_params(params, "train", "mlp2"))
    preprocess(params["data"]["local_dir"], workdir / "data/processed")
    result = CliRunner().invoke(
        app, ["train", "mlp2", "--no-progress"], env={"DVC_STAGE": "train@mlp2"}
    )
    assert result.exit_code == 0, result.output
    assert "mlp2: test accuracy" in result.output

    out = workdir / "models" / "mlp2"
    model, spec = load_checkpoint(out / "model.pt")
    assert spec.hidden == [32, 16]
    with (out / "history.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert list(rows[0]) == ["epoch", *METRIC_KEYS]

    run_id = json.loads((out / "run.json").read_text())["run_id"]
    mlflow.set_tracking_uri(params["mlflow"]["tracking_uri"])
    run = mlflow.get_run(run_id)
    assert run.info.run_name == "mlp2" and run.info.status == "FINISHED"
    assert run.data.params["lr"] == "0.25" and run.data.params["hidden"] == "32,16"
    assert set(run.data.params) == {
        "model",
        "hidden",
        "activation",
        "dropout",
        *TrainParams.model_fields,
    }
    assert run.data.tags["dvc_stage"] == "train@mlp2"
    assert run.data.tags["torch_device"] == str(resolve_device("auto"))
    assert len(run.data.tags["data_md5"]) == 32
    client = mlflow.MlflowClient()
    for key in METRIC_KEYS:
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert sorted(steps) == [1, 2], key
    final = client.get_metric_history(run_id, "test_acc")[-1].value
    assert final == pytest.approx(float(rows[-1]["test_acc"]))
    logged = mlflow.pytorch.load_model(f"runs:/{run_id}/model")
    x = torch.rand(2, 28, 28)
    torch.testing.assert_close(logged(x), model(x))


def test_cli_train_unknown_model_fails_before_any_work(workdir, params):
    write_params(workdir / "params.yaml", params)
    result = CliRunner().invoke(app, ["train", "mlp9"])
    assert result.exit_code == 1
    assert "no model 'mlp9' under models; known: mlp1, mlp2" in result.stderr
    assert not (workdir / "models").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_device_auto_falls_back_to_cpu_and_cuda_without_a_gpu_is_refused():
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(PipelineError, match=r"train.device = 'cuda': no CUDA GPU is available"):
        resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_the_gpu_learns_like_on_the_cpu(splits):
    params = train_params(epochs=3)
    _, on_cpu = run_fit(splits, params)
    generator = torch.Generator().manual_seed(params.seed)
    model = build_mlp(SPEC, params.init_std, generator).to(resolve_device("cuda"))
    on_gpu = fit(model, *splits, params, generator)
    assert on_gpu[-1]["test_acc"] == pytest.approx(on_cpu[-1]["test_acc"], abs=0.02)


def test_cli_train_without_tracking_writes_the_model_but_no_run(workdir, params):
    write_params(workdir / "params.yaml", declared_params(params, "train", "mlp1"))
    preprocess(params["data"]["local_dir"], workdir / "data/processed")
    result = CliRunner().invoke(app, ["train", "mlp1", "--no-progress", "--no-tracking"])
    assert result.exit_code == 0, result.output
    out = workdir / "models" / "mlp1"
    assert sorted(path.name for path in out.iterdir()) == ["history.csv", "model.pt"]
    store = params["mlflow"]["tracking_uri"].removeprefix("sqlite:///")
    assert not Path(store).exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_mid_epoch_leaves_no_output_and_marks_the_run_killed(workdir, params, signum):
    import mlflow

    # Batches of one image: an epoch is hundreds of steps, so the signal lands inside one.
    params["train"] |= {"epochs": 1000, "batch_size": 1}
    write_params(workdir / "params.yaml", declared_params(params, "train", "mlp1"))
    preprocess(params["data"]["local_dir"], workdir / "data/processed")
    process = subprocess.Popen(
        [CLI, "train", "mlp1", "--no-progress"],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in process.stdout:
        if "mlp1 epoch 2:" in line:
            break
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)

    assert process.returncode == 130
    assert stderr.strip().splitlines()[-1] == "interrupted: no output was written"
    out = workdir / "models" / "mlp1"
    assert not out.exists() or list(out.iterdir()) == []
    mlflow.set_tracking_uri(params["mlflow"]["tracking_uri"])
    (run,) = mlflow.search_runs(experiment_names=["fashion-mlp"], output_format="list")
    assert run.info.status == "KILLED"
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "test_acc")]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 2
