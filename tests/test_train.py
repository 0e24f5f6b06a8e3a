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

from fashion_mlp.artifacts import HISTORY_KEYS
from fashion_mlp.cli import app
from fashion_mlp.errors import PipelineError
from fashion_mlp.linalg import pin_numerics
from fashion_mlp.model import build_mlp, load_checkpoint
from fashion_mlp.params import ModelSpec, TrainParams
from fashion_mlp.preprocess import preprocess
from fashion_mlp.splits import Split
from fashion_mlp.tracking.tags import run_name
from fashion_mlp.train import fit, resolve_device
from helpers.data import declared_params, spec, train_params, write_params
from helpers.markers import require, require_gpu
from helpers.process import CLI, logged_steps, wait_until

SPEC = spec()
EPOCH_KEYS = {"epoch", *HISTORY_KEYS, "epoch_seconds"}


@pytest.fixture
def splits(tmp_path, synthetic_raw) -> tuple[Split, Split]:
    source, _ = synthetic_raw
    data = preprocess(source, tmp_path / "processed")
    return data["train"], data["test"]


def run_fit(splits, params, spec=SPEC, **callbacks):
    torch.manual_seed(params.seed)
    generator = torch.Generator().manual_seed(params.seed)
    model = build_mlp(spec, params.init_std, generator)
    fitted = fit(model, *splits, params, generator, **callbacks)
    return fitted.model, fitted.history


def test_loss_falls_when_overfitting_one_small_batch():
    images = torch.randint(0, 256, (32, 28, 28), dtype=torch.uint8)
    batch = Split(images=images, labels=torch.arange(32) % 10)
    _, history = run_fit((batch, batch), train_params(epochs=100, lr=0.1, init_std=0.1))
    assert history[-1]["train_loss"] < 0.1 * history[0]["train_loss"]
    assert history[-1]["train_acc"] == 1.0


def test_learns_the_synthetic_classes_and_reports_every_metric(splits):
    _, history = run_fit(splits, train_params(epochs=5))
    assert [row["epoch"] for row in history] == [1, 2, 3, 4, 5]
    assert all(set(row) == EPOCH_KEYS for row in history)
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


def test_cosine_schedule_steps_once_per_epoch_and_the_history_shows_each_rate(splits):
    _, history = run_fit(splits, train_params(lr_schedule="cosine", epochs=4, lr=0.4))
    expected = [0.4 * (1 + math.cos(math.pi * epoch / 4)) / 2 for epoch in range(4)]
    assert [row["lr"] for row in history] == pytest.approx(expected)
    _, constant = run_fit(splits, train_params(epochs=2, lr=0.4))
    assert [row["lr"] for row in constant] == [0.4, 0.4]


@pytest.mark.parametrize(
    ("lr", "loss"), [(1e9, "nan"), (1000.0, r"\d\.\d+e\+\d+")], ids=["nan", "exploded"]
)
def test_divergence_stops_naming_the_epoch_and_logs_no_nan(splits, lr, loss):
    seen = []
    expected = rf"training diverged in epoch 1: train loss is {loss}, a uniform guess scores 2.30"
    with pytest.raises(PipelineError, match=expected):
        run_fit(splits, train_params(lr=lr, init_std=1.0), on_epoch_end=seen.append)
    assert seen == []


def configured(workdir: Path, params: dict) -> None:
    """configs/ and the processed data of `params`, as the pipeline makes them."""
    write_params(workdir / "params.yaml", declared_params(params, "configure"))
    result = CliRunner().invoke(app, ["configure"])
    assert result.exit_code == 0, result.output
    preprocess(params["data"]["local_dir"], workdir / "data/processed")


def test_cli_train_writes_outputs_and_tracks_the_run_in_mlflow(workdir, params, monkeypatch):
    import hashlib

    import mlflow

    from fashion_mlp.splits import dvc_digests

    params["models"]["mlp2"]["lr"] = 0.25
    configured(workdir, params)
    write_params(workdir / "params.yaml", declared_params(params, "train", "mlp2"))
    # A sample every 0.05 s: even this short training (and its model export) gets some.
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.05")
    result = CliRunner().invoke(
        app,
        ["train", "mlp2", "--config", "configs/mlp2.json", "--no-progress"],
        env={"DVC_STAGE": "train@mlp2"},
    )
    assert result.exit_code == 0, result.output
    assert "mlp2: test accuracy" in result.output
    assert "mlp2 epoch 2/2: train_loss " in result.output

    out = workdir / "models" / "mlp2"
    assert sorted(path.name for path in out.iterdir()) == [
        "history.csv",
        "model.safetensors",
        "test_logits.safetensors",
    ]
    model, model_spec = load_checkpoint(out / "model.safetensors")
    # The logits evaluate reads are the saved model's own, on the test split.
    from safetensors.numpy import load_file

    from fashion_mlp.model import as_inputs, predict_logits
    from fashion_mlp.splits import load_split

    logits = load_file(out / "test_logits.safetensors")["logits"]
    test = load_split(workdir / "data/processed", "test")
    assert torch.equal(torch.from_numpy(logits), predict_logits(model, as_inputs(test.images)))
    assert model_spec.hidden == [32, 16]
    with (out / "history.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert list(rows[0]) == ["epoch", *HISTORY_KEYS]

    mlflow.set_tracking_uri(params["mlflow"]["tracking_uri"])
    (run,) = mlflow.search_runs(experiment_names=["fashion-mlp"], output_format="list")
    run_id = run.info.run_id
    assert run.info.run_name == run_name("mlp2") and run.info.status == "FINISHED"
    assert run.data.params["lr"] == "0.25" and run.data.params["hidden"] == "32,16"
    assert set(run.data.params) == {"model", *ModelSpec.model_fields, *TrainParams.model_fields}
    tags = run.data.tags
    assert tags["dvc_stage"] == "train@mlp2"
    assert tags["torch_device"] == str(resolve_device("auto"))
    assert tags["numerics"] == pin_numerics()  # e.g. gemm-avx512 aten-avx2 mkl-COMPATIBLE,STRICT
    assert tags["cpu"].endswith(" cores)")
    assert tags["torch_threads"] in {"1", "2"} or "," in tags["torch_threads"]
    assert tags["fashion_mlp.pid"].isdigit() and tags["fashion_mlp.host"]
    assert (tags["fashion_mlp.model"], tags["fashion_mlp.stage"]) == ("mlp2", "train")
    weights = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    assert tags["fashion_mlp.weights_sha256"] == weights
    # The data it trained on, as MLflow dataset inputs with the digests dvc.lock would show.
    folder_md5, file_md5s = dvc_digests(workdir / "data/processed")
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"fashion-mnist-train", "fashion-mnist-test"}
    train_input = inputs["fashion-mnist-train"]
    assert train_input.dataset.digest == file_md5s["train.safetensors"]
    assert json.loads(train_input.dataset.source)["dvc_md5"] == folder_md5
    assert [(t.key, t.value) for t in train_input.tags] == [("mlflow.data.context", "training")]
    assert json.loads(inputs["fashion-mnist-test"].dataset.profile)["images"] == 100
    client = mlflow.MlflowClient()
    for key in (*HISTORY_KEYS, "epoch_seconds"):
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert sorted(steps) == [1, 2], key
    final = client.get_metric_history(run_id, "test_acc")[-1].value
    assert final == pytest.approx(float(rows[-1]["test_acc"]))
    assert any(key.startswith("system/cpu_utilization") for key in run.data.metrics)
    # The model, a LoggedModel named after it, loads and computes what the checkpoint does.
    (logged,) = client.search_logged_models([run.info.experiment_id])
    assert (logged.name, logged.source_run_id, logged.status) == ("mlp2", run_id, "READY")
    assert logged.tags["fashion_mlp.weights_sha256"] == weights
    network = mlflow.pytorch.load_model(f"models:/{logged.model_id}")
    x = torch.rand(2, 28, 28)
    torch.testing.assert_close(network(x), model(x))


def test_cli_train_of_an_unconfigured_model_fails_before_any_work(workdir, params):
    configured(workdir, params)
    result = CliRunner().invoke(app, ["train", "mlp9", "--config", "configs/mlp9.json"])
    assert result.exit_code == 1
    assert result.stderr.startswith(
        "error: configs/mlp9.json: model config not found; run `fashion-mlp configure`"
    )
    by_hand = CliRunner().invoke(app, ["train", "mlp9"])  # from params.yaml
    assert by_hand.exit_code == 1
    assert by_hand.stderr.startswith("error: params.yaml: no model 'mlp9' under models; known: ")
    assert not (workdir / "models").exists()


def test_train_by_hand_trains_what_the_params_file_says_not_a_config_left_from_before(
    workdir, params
):
    """configs/ says 2 epochs (the params it was written from); the params file now says 1, and
    other.yaml 3: without --config, train computes the effective params from --params."""
    configured(workdir, params)
    params["train"]["epochs"] = 1
    write_params(workdir / "params.yaml", params)
    write_params(workdir / "other.yaml", params | {"train": params["train"] | {"epochs": 3}})
    for args, epochs in (([], 1), (["--params", "other.yaml"], 3)):
        result = CliRunner().invoke(
            app, ["train", "mlp1", *args, "--no-progress", "--no-tracking", "--out-dir", "out"]
        )
        assert result.exit_code == 0, result.output
        assert result.output.splitlines()[-1].endswith(f"after {epochs} epochs"), args


def test_a_key_written_twice_in_a_config_is_refused_before_any_work(workdir, params):
    configured(workdir, params)
    config = workdir / "configs/mlp1.json"
    config.write_text(config.read_text().replace('"lr": 0.5,', '"lr": 0.5, "lr": 5.0,'))
    result = CliRunner().invoke(
        app, ["train", "mlp1", "--config", str(config), "--no-progress", "--no-tracking"]
    )
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"error: {config}: key 'lr' appears twice in one object; keep one; run `fashion-mlp "
        "configure`"
    )
    assert not (workdir / "models").exists()


@pytest.mark.slow
def test_the_console_script_exits_with_the_commands_status_and_all_its_output(workdir, params):
    """`fashion-mlp` ends without the interpreter's teardown (cli.run): what the command printed
    still reaches the pipe, its run is complete in the store, and the status is the command's."""
    import mlflow

    params["train"]["epochs"] = 2
    configured(workdir, params)
    write_params(workdir / "params.yaml", declared_params(params, "train", "mlp1"))
    trained = subprocess.run(
        [CLI, "train", "mlp1", "--config", "configs/mlp1.json", "--no-progress"],
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    assert trained.returncode == 0, trained.stderr
    assert trained.stdout.splitlines()[-1].startswith("mlp1: test accuracy ")
    mlflow.set_tracking_uri(params["mlflow"]["tracking_uri"])
    (run,) = mlflow.search_runs(experiment_names=["fashion-mlp"], output_format="list")
    assert (
        run.info.status == "FINISHED"
        and logged_steps(
            Path(params["mlflow"]["tracking_uri"].removeprefix("sqlite:///")), "test_acc"
        )
        == 2
    )
    failed = subprocess.run(
        [CLI, "train", "mlp9", "--config", "configs/mlp9.json"],
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    assert failed.returncode == 1 and failed.stderr.startswith("error: configs/mlp9.json")
    unknown = subprocess.run([CLI, "trian"], cwd=workdir, capture_output=True, text=True)
    assert unknown.returncode == 2 and "No such command 'trian'" in unknown.stderr


def test_device_auto_falls_back_to_cpu_and_cuda_without_a_gpu_is_refused():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(PipelineError, match=r"train.device = 'cuda': no CUDA GPU is available"):
        resolve_device("cuda")


@pytest.mark.gpu
def test_training_on_the_gpu_learns_like_on_the_cpu(splits):
    require_gpu()
    params = train_params(epochs=3)
    _, on_cpu = run_fit(splits, params)
    generator = torch.Generator().manual_seed(params.seed)
    model = build_mlp(SPEC, params.init_std, generator).to(resolve_device("cuda"))
    on_gpu = fit(model, *splits, params, generator).history
    assert on_gpu[-1]["test_acc"] == pytest.approx(on_cpu[-1]["test_acc"], abs=0.02)


def test_cli_train_without_tracking_writes_the_model_but_no_run(workdir, params):
    configured(workdir, params)
    write_params(workdir / "params.yaml", declared_params(params, "train", "mlp1"))
    result = CliRunner().invoke(
        app, ["train", "mlp1", "--config", "configs/mlp1.json", "--no-progress", "--no-tracking"]
    )
    assert result.exit_code == 0, result.output
    out = workdir / "models" / "mlp1"
    assert {"history.csv", "model.safetensors"} <= {path.name for path in out.iterdir()}
    store = params["mlflow"]["tracking_uri"].removeprefix("sqlite:///")
    assert not Path(store).exists()


def start_training(
    workdir: Path, params: dict, epochs: int, launcher: tuple[str, ...] = ()
) -> subprocess.Popen:
    """`fashion-mlp train mlp1` of `epochs` epochs as a process (started by `launcher`, if any),
    in batches of one image (an epoch is hundreds of steps, so a signal or an edit lands inside
    one), returned once it has printed its first epoch."""
    params["train"] |= {"epochs": epochs, "batch_size": 1}
    configured(workdir, params)
    write_params(workdir / "params.yaml", declared_params(params, "train", "mlp1"))
    process = subprocess.Popen(
        [*launcher, CLI, "train", "mlp1", "--config", "configs/mlp1.json", "--no-progress"],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in process.stdout:
        if "mlp1 epoch 1/" in line:
            break
    return process


def start_long_training(
    workdir: Path, params: dict, launcher: tuple[str, ...] = ()
) -> subprocess.Popen:
    """A training that will not end by itself, returned once the store holds two epochs."""
    process = start_training(workdir, params, 1000, launcher)
    # MLflow logs in the background: wait until the store holds the two epochs.
    store = Path(params["mlflow"]["tracking_uri"].removeprefix("sqlite:///"))
    wait_until(lambda: logged_steps(store, "test_acc") >= 2, "two logged epochs", None, 60)
    return process


@pytest.mark.parametrize(
    "signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["ctrl-c", "sigterm", "sighup"]
)
@pytest.mark.slow
def test_interrupt_mid_epoch_leaves_no_output_and_marks_the_run_killed(workdir, params, signum):
    import mlflow

    process = start_long_training(workdir, params)
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
    assert list(workdir.glob("models/**/.*.tmp")) == []


@pytest.mark.slow
def test_a_run_whose_process_was_killed_is_closed_by_the_next_training(workdir, params):
    """SIGKILL (or an OOM kill) leaves no chance to close the run; the next training of the
    same model finds it by host, pid and process start time, and closes it KILLED."""
    import mlflow

    process = start_long_training(workdir, params)
    process.kill()
    process.communicate(timeout=60)
    mlflow.set_tracking_uri(params["mlflow"]["tracking_uri"])
    (orphan,) = mlflow.search_runs(experiment_names=["fashion-mlp"], output_format="list")
    assert orphan.info.status == "RUNNING"

    params["train"] |= {"epochs": 1, "batch_size": 32}
    configured(workdir, params)
    write_params(workdir / "params.yaml", declared_params(params, "train", "mlp1"))
    result = CliRunner().invoke(
        app, ["train", "mlp1", "--config", "configs/mlp1.json", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    closed = mlflow.get_run(orphan.info.run_id)
    assert closed.info.status == "KILLED"
    assert closed.data.tags["fashion_mlp.closed_by"].startswith("its process was gone")
    newest = mlflow.search_runs(experiment_names=["fashion-mlp"], output_format="list")[0]
    assert newest.data.tags["fashion_mlp.closed_orphans"] == orphan.info.run_id


def test_cleanup_leaves_runs_of_live_processes_and_other_hosts_alone(workdir, params):
    import mlflow

    from fashion_mlp.tracking.orphans import owner_tags
    from fashion_mlp.tracking.tags import HOST_TAG, PID_TAG, STARTED_TAG

    mlflow.set_tracking_uri(params["mlflow"]["tracking_uri"])
    experiment = mlflow.create_experiment("fashion-mlp")
    client = mlflow.MlflowClient()
    alive = owner_tags()  # this test's own process: alive
    gone = alive | {PID_TAG: "999999999"}
    reused = alive | {STARTED_TAG: "1.0"}  # our pid, but not our start time: a reused pid
    elsewhere = gone | {HOST_TAG: "another-host"}
    runs = {
        name: client.create_run(experiment, tags=tags, run_name="mlp1").info.run_id
        for name, tags in (
            ("alive", alive),
            ("gone", gone),
            ("reused", reused),
            ("elsewhere", elsewhere),
        )
    }
    write_params(workdir / "params.yaml", declared_params(params, "train", "mlp1"))
    result = CliRunner().invoke(app, ["cleanup-runs"])
    assert result.exit_code == 0, result.output
    status = {name: client.get_run(run_id).info.status for name, run_id in runs.items()}
    assert status == {
        "alive": "RUNNING",
        "gone": "KILLED",
        "reused": "KILLED",
        "elsewhere": "RUNNING",
    }
    assert "closed 2 runs" in result.output


@pytest.mark.slow
def test_a_training_in_another_pid_namespace_is_never_closed_by_this_ones_cleanup(workdir, params):
    """A container on this host: same host name and boot, its own pids. Its training's pid
    means another process here (or none), so only the namespace tells the two apart."""
    import mlflow

    container = ("unshare", "--pid", "--fork", "--mount-proc", "--kill-child")
    probe = subprocess.run([*container, "true"], capture_output=True)
    require(probe.returncode == 0, f"unshare cannot make a PID namespace: {probe.stderr!r}")
    process = start_long_training(workdir, params, container)
    try:
        result = CliRunner().invoke(app, ["cleanup-runs"])
        assert result.exit_code == 0 and "closed 0 runs" in result.output, result.output
        mlflow.set_tracking_uri(params["mlflow"]["tracking_uri"])
        (run,) = mlflow.search_runs(experiment_names=["fashion-mlp"], output_format="list")
        assert run.info.status == "RUNNING"
        assert int(run.data.tags["fashion_mlp.pid"]) < 10  # the container's own numbering
    finally:
        process.kill()
        process.communicate(timeout=60)


def test_cleanup_fails_the_logged_model_a_killed_run_left_pending(workdir, params):
    import mlflow

    from fashion_mlp.tracking.orphans import owner_tags
    from fashion_mlp.tracking.tags import PID_TAG

    mlflow.set_tracking_uri(params["mlflow"]["tracking_uri"])
    experiment = mlflow.create_experiment("fashion-mlp")
    client = mlflow.MlflowClient()
    run_id = client.create_run(experiment, tags=owner_tags() | {PID_TAG: "999999999"}).info.run_id
    pending = client.create_logged_model(experiment, name="model", source_run_id=run_id)
    assert pending.status == "PENDING"
    write_params(workdir / "params.yaml", declared_params(params, "train", "mlp1"))
    result = CliRunner().invoke(app, ["cleanup-runs"])
    assert result.exit_code == 0, result.output
    assert client.get_logged_model(pending.model_id).status == "FAILED"
    assert client.get_run(run_id).info.status == "KILLED"


def reference_training(spec, params, train, test):
    """d2l's training loop written out plainly, independent of `fit`: the same seeded init and
    batch order, mini-batch SGD or Adam, optional per-epoch cosine decay, nothing else."""
    torch.manual_seed(params.seed)
    generator = torch.Generator().manual_seed(params.seed)
    model = build_mlp(spec, params.init_std, generator)
    if params.optimizer == "adam":
        # Fused, as the pipeline's: its square root is the same on every CPU (numerics.py).
        optimizer = torch.optim.Adam(
            model.parameters(), lr=params.lr, weight_decay=params.weight_decay, fused=True
        )
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=params.lr, momentum=params.momentum)
    schedule = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=params.epochs)
        if params.lr_schedule == "cosine"
        else None
    )
    inputs = train.images.float() / 255
    for _ in range(params.epochs):
        model.train()
        for batch in torch.randperm(len(train), generator=generator).split(params.batch_size):
            loss = torch.nn.functional.cross_entropy(model(inputs[batch]), train.labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if schedule is not None:
            schedule.step()
    return model


@pytest.mark.parametrize(
    ("spec", "overrides"),
    [
        (SPEC, {}),
        (
            spec([48, 24], dropout=0.2),
            dict(optimizer="adam", lr=0.003, lr_schedule="cosine", weight_decay=1e-4),
        ),
    ],
    ids=["d2l-sgd", "adam-cosine-dropout"],
)
def test_every_option_at_its_neutral_value_trains_exactly_the_plain_loop(splits, spec, overrides):
    """Adding batch norm, warm-up, label smoothing, weight averaging and augmentation changed
    nothing for models that use none of them: the weights equal a plain loop's, bit for bit."""
    params = train_params(epochs=3, **overrides)
    ours, _ = run_fit(splits, params, spec)
    reference = reference_training(spec, params, *splits)
    for name, value in reference.state_dict().items():
        assert torch.equal(ours.state_dict()[name], value), name


@pytest.mark.parametrize(
    "option",
    [
        {"batch_norm": True},
        {"dropout": 0.3},
        {"warmup_epochs": 1},
        {"label_smoothing": 0.1},
        {"ema_decay": 0.9},
        {"augment_shift": 2},
        {"augment_flip": True},
    ],
    ids=lambda option: next(iter(option)),
)
def test_each_option_changes_training_and_still_learns(splits, option):
    architecture = {key: option.pop(key) for key in ("batch_norm", "dropout") if key in option}
    params = train_params(epochs=4, **option)
    model, history = run_fit(splits, params, SPEC.model_copy(update=architecture))
    baseline, _ = run_fit(splits, train_params(epochs=4))
    weights = [p for p in model.parameters() if p.dim() == 2]
    assert not torch.equal(weights[0], next(baseline.parameters()))
    # The synthetic classes are bands of rows two pixels apart: a vertical shift of up to two
    # rows turns one class into its neighbour, so shifted training can only beat chance.
    assert history[-1]["test_acc"] >= (0.3 if "augment_shift" in option else 0.9)


def test_warm_up_ramps_the_rate_then_hands_over_to_cosine_as_the_history_records(splits):
    """300 images in batches of 32: 10 steps an epoch. Two epochs of warm-up end at the full
    rate, step by step (their last steps at 0.2 and 0.4); then cosine over the 2 remaining
    epochs: the full rate, then half of it."""
    params = train_params(epochs=4, warmup_epochs=2, lr_schedule="cosine", lr=0.4)
    _, history = run_fit(splits, params)
    assert [row["lr"] for row in history] == pytest.approx([0.2, 0.4, 0.4, 0.2])


def test_weight_averaging_keeps_the_exponential_average_of_the_weights(splits):
    """ema_decay 0.5 over a run: the kept weights are the average, not the last weights.
    torch's AveragedModel starts from the weights after the first step, then averages in each
    step's weights: doing that by hand gives the same numbers."""
    params = train_params(epochs=1, ema_decay=0.5)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = build_mlp(SPEC, params.init_std, generator)
    average: list[torch.Tensor] = []

    def follow():
        live = [p.detach() for p in model.parameters()]
        if not average:
            average.extend(p.clone() for p in live)
            return
        for mean, weight in zip(average, live, strict=True):
            mean.mul_(0.5).add_(weight, alpha=0.5)

    kept = fit(model, *splits, params, generator, on_batch_end=follow).model
    assert kept is not model
    for mean, kept_weight, live in zip(average, kept.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(kept_weight, mean)
        assert not torch.equal(kept_weight, live)


@pytest.mark.slow
def test_a_config_rewritten_while_training_runs_fails_the_stage_and_writes_nothing(workdir, params):
    """Two `dvc exp run` in one workspace: the second rewrites params.yaml and configs/ while
    the first trains. The first must not write a model that matches neither config."""
    import mlflow

    process = start_training(workdir, params, epochs=3)
    params["train"]["lr"] = 0.01  # what the other experiment's configure writes
    configured(workdir, params)
    _, stderr = process.communicate(timeout=120)

    assert process.returncode == 1
    assert "configs/mlp1.json changed while this stage ran" in stderr.strip().splitlines()[-1]
    out = workdir / "models" / "mlp1"
    assert not out.exists() or list(out.iterdir()) == []
    mlflow.set_tracking_uri(params["mlflow"]["tracking_uri"])
    (run,) = mlflow.search_runs(experiment_names=["fashion-mlp"], output_format="list")
    assert run.info.status == "FAILED"


@pytest.mark.slow
def test_outputs_are_replaced_together_or_the_old_ones_stay(workdir, params, monkeypatch):
    """A failure while the new files move in (here: the last of the three) puts back the ones
    already moved, so a new model never sits beside an old history or old logits."""
    import os

    import mlflow

    import fashion_mlp.atomic

    params["train"]["epochs"] = 1
    configured(workdir, params)
    write_params(workdir / "params.yaml", declared_params(params, "train", "mlp1"))
    assert (
        CliRunner()
        .invoke(app, ["train", "mlp1", "--config", "configs/mlp1.json", "--no-progress"])
        .exit_code
        == 0
    )
    out = workdir / "models" / "mlp1"
    before = {path.name: path.read_bytes() for path in out.iterdir()}

    real_replace = os.replace

    def failing_replace(source, target):
        new_file = Path(source).parent.name.endswith(".tmp")  # not the old one set aside
        if new_file and Path(source).name == "test_logits.safetensors":
            raise PermissionError(13, "Permission denied", str(target))
        real_replace(source, target)

    monkeypatch.setattr(fashion_mlp.atomic.os, "replace", failing_replace)
    params["train"]["lr"] = 0.05
    configured(workdir, params)
    result = CliRunner().invoke(
        app, ["train", "mlp1", "--config", "configs/mlp1.json", "--no-progress"]
    )

    assert result.exit_code == 1
    assert result.stderr.strip() == "error: models/mlp1/test_logits.safetensors: Permission denied"
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    mlflow.set_tracking_uri(params["mlflow"]["tracking_uri"])
    newest, first = mlflow.search_runs(experiment_names=["fashion-mlp"], output_format="list")
    assert (newest.info.status, first.info.status) == ("FAILED", "FINISHED")


def test_a_model_too_big_for_the_memory_is_refused_before_it_is_built(workdir, params):
    params["models"]["mlp2"]["hidden"] = [65536, 65536]  # 4.4e9 weights: 17 GB of float32
    configured(workdir, params)
    write_params(workdir / "params.yaml", declared_params(params, "train", "mlp2"))
    result = CliRunner().invoke(
        app, ["train", "mlp2", "--config", "configs/mlp2.json", "--no-progress", "--no-tracking"]
    )
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: hidden [65536, 65536]: training needs about 80.9 GiB of memory")
    assert line.endswith("GiB free; make the layers narrower")
    assert not (workdir / "models").exists()
