"""The Ray Tune sweep: seeded plans, an embedded-Ray search with early stopping, every trial in
MLflow, faults (a diverging trial, a killed trial, Ctrl-C), and selection that never sees the
test split. One embedded Ray serves the in-process sweeps of this module; the multi-node
cluster tests are in test_sweep_cluster.py."""

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from fashion_mlp.errors import PipelineError
from fashion_mlp.params import load_params
from fashion_mlp.sweep.report import REPORT_FILES
from fashion_mlp.sweep.space import plan_trials
from fashion_mlp.tracking.store import Store, TrackingTarget
from helpers.data import (
    PROJECT_ROOT,
    declared_leaves,
    isolate,
    sweep_section,
    tiny_params,
    write_params,
    write_synthetic_raw,
)
from helpers.process import CLI, stage_env

GOOD, BAD, DIVERGING = {}, {"lr": 1e-6}, {"lr": 1e9, "init_std": 1.0}


@pytest.fixture
def sweep_project(tmp_path, monkeypatch) -> Path:
    from fashion_mlp.preprocess import preprocess

    checksums = write_synthetic_raw(tmp_path / "source", train_count=400, test_count=100)
    params = tiny_params(tmp_path / "source", checksums, "sqlite:///mlflow.db")
    params["sweep"] = sweep_section(GOOD, BAD)
    project = tmp_path / "project"
    project.mkdir()
    write_params(project / "params.yaml", params)
    preprocess(tmp_path / "source", project / "data/processed")
    isolate(monkeypatch, project)
    return project


def edit_sweep(project: Path, **changes) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["sweep"] |= changes
    write_params(project / "params.yaml", params)


def test_the_seed_fixes_the_trials_and_a_grid_is_crossed_with_the_draws(sweep_project):
    params = load_params(sweep_project / "params.yaml")
    plans = plan_trials(params)
    assert len(plans) == 4  # 2 draws x 2 grid points
    assert [plan.sampled["variant"] for plan in plans] == [GOOD, BAD, GOOD, BAD]
    again = plan_trials(load_params(sweep_project / "params.yaml"))
    assert [plan.sampled for plan in plans] == [plan.sampled for plan in again]
    for plan in plans:
        assert 0.2 <= plan.sampled["lr"] <= 0.6 and plan.sampled["hidden"] in ([32], [48])
        # A variant sets its keys over anything drawn for them; the rest comes from `train`.
        expected_lr = plan.sampled["variant"].get("lr", plan.sampled["lr"])
        assert plan.config.train.lr == expected_lr
        assert plan.config.train.batch_size == params._raw["train"]["batch_size"]
    edit_sweep(sweep_project, seed=1)
    other = plan_trials(load_params(sweep_project / "params.yaml"))
    assert [plan.sampled["lr"] for plan in other] != [plan.sampled["lr"] for plan in plans]


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"lr": {"normal": [0, 1]}}, "sweep.space.lr = {'normal': [0, 1]}: expected one of choice"),
        (
            {"lr": {"loguniform": [0, 1]}},
            "sweep.space.lr.loguniform.0 = 0: Input should be greater than 0",
        ),
        (
            {"lr": {"uniform": [0.5, 0.1]}},
            "sweep.space.lr.uniform = {'uniform': [0.5, 0.1]}: expected [low, high] with low <",
        ),
        ({"activation": {"choice": ["swish"]}}, "activation = 'swish': Input should be"),
        ({"lerning_rate": {"choice": [0.1]}}, "lerning_rate = 0.1: unknown key"),
    ],
    ids=["unknown-kind", "log-of-zero", "reversed", "bad-value", "typo"],
)
def test_a_bad_search_space_is_one_line_before_ray_starts(sweep_project, space, message):
    edit_sweep(sweep_project, space=space)
    with pytest.raises(PipelineError, match=None) as caught:
        plan_trials(load_params(sweep_project / "params.yaml"))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_cluster_with_a_sqlite_store_is_refused(sweep_project):
    from typer.testing import CliRunner

    from fashion_mlp.cli import app

    result = CliRunner().invoke(app, ["sweep"], env={"RAY_ADDRESS": "127.0.0.1:6379"})
    assert result.exit_code == 1
    assert result.stderr.startswith(
        "error: a Ray cluster needs a tracking server: set MLFLOW_TRACKING_URI (got sqlite:///"
    )


@pytest.fixture(scope="module")
def embedded_ray():
    """One local Ray for the module's in-process sweeps (starting one costs ~10 s)."""
    import ray

    from fashion_mlp.numerics import NUMERICS_ENV

    ray.init(
        address="local",  # a private instance, whatever else runs on this machine
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="WARNING",
        object_store_memory=128 * 1024 * 1024,
        runtime_env={"env_vars": dict(NUMERICS_ENV)},
    )
    yield
    ray.shutdown()


def sweep_runs(project: Path) -> tuple:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["fashion-mlp"], output_format="list")
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    return parents, children


@pytest.mark.ray
def test_the_sweep_reads_exactly_the_params_its_stage_declares(
    sweep_project, embedded_ray, params_reads
):
    """params.yaml's own search space, shrunk to two short trials: the keys the sweep took are
    the ones sweeps/dvc.yaml declares (and where runs are recorded, which no stage declares)."""
    from typer.testing import CliRunner

    from fashion_mlp.cli import app
    from fashion_mlp.params import RECORDING_KEYS

    ours = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())["sweep"]
    ours |= {"trials": 2, "validation_size": 100, "cpus_per_trial": 1}
    ours["base"] |= {"epochs": 2}
    edit_sweep(sweep_project, **ours)
    result = CliRunner().invoke(app, ["sweep", "--no-progress"])
    assert result.exit_code == 0, result.output
    params = yaml.safe_load((sweep_project / "params.yaml").read_text())
    declared = declared_leaves(PROJECT_ROOT / "sweeps/dvc.yaml", "sweep", params)
    read = set().union(*(loaded.reads for loaded in params_reads))
    assert read - set(RECORDING_KEYS) == declared


@pytest.mark.ray
def test_a_sweep_tracks_every_trial_stops_the_bad_ones_and_writes_its_reports(
    sweep_project, embedded_ray
):
    import mlflow
    from typer.testing import CliRunner

    from fashion_mlp.cli import app

    edit_sweep(
        sweep_project,
        space=sweep_section()["space"] | {"variant": {"grid": [GOOD, GOOD, BAD, DIVERGING]}},
        trials=1,
    )
    result = CliRunner().invoke(app, ["sweep", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "4 trials; best: trial" in result.output

    (parent,), children = sweep_runs(sweep_project)
    assert parent.info.run_name == "tiny-search" and parent.info.status == "FINISHED"
    assert parent.data.params["trials"] == "1" and "grace_period" in parent.data.params
    assert len(children) == 4
    by_trial = {int(run.data.tags["sweep_trial"]): run for run in children}
    client = mlflow.MlflowClient()
    for index, run in by_trial.items():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["ray_node_id"]
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert steps == list(range(1, len(steps) + 1)), index
        # Trials report validation metrics only: no test split reaches them.
        assert set(run.data.metrics) <= {
            "train_loss",
            "train_acc",
            "val_acc",
            "lr",
            "epoch_seconds",
        }
    good = [by_trial[0], by_trial[1]]
    assert [run.info.status for run in good] == ["FINISHED", "FINISHED"]
    # The first trial has nothing to be compared with: it runs all its epochs.
    assert len(client.get_metric_history(good[0].info.run_id, "val_acc")) == 4
    bad = by_trial[2]
    assert bad.info.status == "FINISHED" and int(bad.data.tags["early_stopped_at_epoch"]) < 4
    diverged = by_trial[3]
    assert diverged.info.status == "FAILED"
    assert "training diverged in epoch 1" in diverged.data.tags["sweep_trial_error"]

    reports = sweep_project / "reports/sweep"
    assert sorted(path.name for path in reports.iterdir()) == sorted(REPORT_FILES)
    trials = (reports / "trials.csv").read_text().splitlines()
    assert trials[0].startswith("rank,trial,") and len(trials) == 5
    markdown = (reports / "sweep.md").read_text()
    assert "its test accuracy, measured once after choosing, is" in markdown
    assert (reports / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert float(parent.data.metrics["best_trial_test_acc"]) > 0.5
    # The winner pastes into params.yaml as a models entry that trains.
    best = yaml.safe_load((reports / "best.yaml").read_text())["models"]
    params = yaml.safe_load((sweep_project / "params.yaml").read_text())
    params["models"] |= best
    write_params(sweep_project / "pasted.yaml", params)
    (name,) = best
    config = load_params(sweep_project / "pasted.yaml").run_config(name)
    winner = by_trial[int(parent.data.tags["best_trial"])]
    assert winner in good
    assert str(config.train.lr) == winner.data.params["lr"]
    assert ",".join(map(str, config.model.hidden)) == winner.data.params["hidden"]


@pytest.mark.ray
def test_trials_never_read_the_test_split(sweep_project, embedded_ray):
    """With the test split replaced by garbage, every trial still runs; only the one test of
    the winner, after choosing, stops on it."""
    from typer.testing import CliRunner

    from fashion_mlp.cli import app

    (sweep_project / "data/processed/test.safetensors").write_bytes(b"not a tensor file")
    result = CliRunner().invoke(app, ["sweep", "--no-progress"])
    assert result.exit_code == 1
    assert "data/processed/test.safetensors: not a processed split" in result.stderr
    (parent,), children = sweep_runs(sweep_project)
    assert parent.info.status == "FAILED"
    assert {run.info.status for run in children} == {"FINISHED"}
    assert not (sweep_project / "reports").exists()


@pytest.mark.ray
def test_a_killed_trial_is_retried_without_logging_an_epoch_twice(sweep_project, embedded_ray):
    import threading

    import mlflow
    from typer.testing import CliRunner

    from fashion_mlp.cli import app

    # Batches of one image make epochs long enough to kill a trial in the middle.
    edit_sweep(
        sweep_project,
        trials=1,
        base={"hidden": [32], "activation": "relu", "epochs": 40, "batch_size": 1, "lr": 0.01},
        space={"variant": {"grid": [GOOD]}},
    )
    mlflow.set_tracking_uri(f"sqlite:///{sweep_project / 'mlflow.db'}")
    killed = []

    def kill_the_trial_after_two_epochs() -> None:
        # Plain sqlite3: MLflow's client would run the store's migrations, racing the sweep's.
        database = f"file:{sweep_project / 'mlflow.db'}?mode=ro"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            try:
                with sqlite3.connect(database, uri=True) as connection:
                    found = connection.execute(
                        "SELECT t.value FROM tags t WHERE t.key = 'ray_worker_pid' AND "
                        "(SELECT COUNT(*) FROM metrics m WHERE m.run_uuid = t.run_uuid "
                        "AND m.key = 'val_acc') >= 2"
                    ).fetchall()
            except sqlite3.Error:
                found = []
            if found:
                os.kill(int(found[0][0]), signal.SIGKILL)
                killed.append(found[0][0])
                return
            time.sleep(0.3)

    killer = threading.Thread(target=kill_the_trial_after_two_epochs)
    killer.start()
    result = CliRunner().invoke(app, ["sweep", "--no-progress"])
    killer.join()
    assert killed, "the trial was never seen running"
    assert result.exit_code == 0, result.output
    (_,), (child,) = sweep_runs(sweep_project)
    assert child.info.status == "FINISHED" and child.data.tags["fashion_mlp.attempts"] == "2"
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(child.info.run_id, "val_acc")]
    assert steps == list(range(1, 41))


@pytest.mark.ray
def test_ctrl_c_kills_the_parent_and_every_unfinished_trial_and_writes_no_report(sweep_project):
    edit_sweep(
        sweep_project,
        trials=3,
        base={"hidden": [32], "activation": "relu", "epochs": 500, "batch_size": 1, "lr": 0.01},
        space={"lr": {"loguniform": [0.001, 0.01]}},
    )
    # The store exists before the sweep starts, so polling it below never races its creation.
    assert Store(TrackingTarget(f"sqlite:///{sweep_project / 'mlflow.db'}", "fashion-mlp")).client
    process = subprocess.Popen(
        [CLI, "sweep", "--no-progress"],
        cwd=sweep_project,
        env=stage_env(FASHION_MLP_CORE_REGISTRY=str(sweep_project / "cores")),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        _, children = sweep_runs(sweep_project)
        if any(run.info.status == "RUNNING" for run in children):
            break
        time.sleep(0.5)
    time.sleep(2)  # a few epochs in
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=180)
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "interrupted: no output was written"
    (parent,), children = sweep_runs(sweep_project)
    assert parent.info.status == "KILLED"
    assert {run.info.status for run in children} <= {"KILLED", "FINISHED"}
    assert "KILLED" in {run.info.status for run in children}
    assert not (sweep_project / "reports").exists()
    assert parent.data.params["name"] == "tiny-search"
