"""The Ray Tune sweep: seeded plans, an embedded-Ray search with early stopping, every trial in
MLflow, faults (a diverging trial, a killed trial, Ctrl-C and SIGTERM, a SIGKILLed driver, a
tracking server that dies, a trial no node can hold), and selection that never sees the test
split. One embedded Ray serves the in-process sweeps of this module; the multi-node
cluster tests are in test_sweep_cluster.py."""

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
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
from helpers.process import CLI, free_port, logged_steps, responds, stage_env, wait_until
from helpers.servers import mlflow_server_command

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


def long_sweep(project: Path, **changes) -> None:
    """Trials of 500 epochs of one-image batches, one at a time: a sweep to stop mid-trial."""
    base = {"hidden": [32], "activation": "relu", "epochs": 500, "batch_size": 1, "lr": 0.01}
    space = {"lr": {"loguniform": [0.001, 0.01]}}
    edit_sweep(project, **({"trials": 3, "base": base, "space": space} | changes))


@pytest.fixture
def start_sweep() -> Iterator[Callable[..., subprocess.Popen]]:
    """Starts `fashion-mlp sweep` in a project as a shell starts a job: in a process group of
    its own (with the Ray processes it starts), so a signal can reach the group as Ctrl-C or an
    OOM kill does. A sweep still running when the test ends is killed with its group."""
    started: list[subprocess.Popen] = []

    def start(project: Path, **env: str) -> subprocess.Popen:
        process = subprocess.Popen(
            [CLI, "sweep", "--no-progress"],
            cwd=project,
            env=stage_env(FASHION_MLP_CORE_REGISTRY=str(project / "cores"), **env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()


def wait_for_epochs(database: Path, process: subprocess.Popen, epochs: int = 2) -> None:
    """Until the sweep's trials logged `epochs` epochs in `database` (a SQLite store)."""
    wait_until(
        lambda: logged_steps(database, "val_acc") >= epochs,
        "the sweep's first epochs",
        None,
        seconds=180,
        process=process,
    )


def create_store(project: Path) -> Path:
    """The project's store, created before the sweep starts, so polling it never races its
    creation (MLflow's migrations)."""
    database = project / "mlflow.db"
    assert Store(TrackingTarget(f"sqlite:///{database}", "fashion-mlp")).client
    return database


@pytest.mark.ray
@pytest.mark.parametrize(
    ("stop", "to_group"),
    [(signal.SIGINT, True), (signal.SIGTERM, False)],
    # Ctrl-C reaches the terminal's whole process group (the driver and Ray's own processes);
    # `kill`, `dvc queue kill`, CI timeouts and systemd send the driver SIGTERM.
    ids=["ctrl-c-to-the-process-group", "sigterm-to-the-driver"],
)
def test_ctrl_c_or_sigterm_kills_the_parent_and_every_started_trial_and_writes_no_report(
    sweep_project, start_sweep, stop, to_group
):
    # 2,000 trials (1,000 draws x 2 grid points), one at a time: a trial's run is created when
    # the trial starts, so the store holds the parent and the one trial that started.
    long_sweep(
        sweep_project,
        trials=1000,
        space={"lr": {"loguniform": [0.001, 0.01]}, "variant": {"grid": [GOOD, BAD]}},
    )
    database = create_store(sweep_project)
    # Ray writes logs under its temp folder, world-readable: the password must not be there.
    ray_temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # Ray's socket paths: short
    canary = "canary-password-7f3a"
    process = start_sweep(sweep_project, MLFLOW_TRACKING_PASSWORD=canary, RAY_TMPDIR=str(ray_temp))
    wait_for_epochs(database, process)
    if to_group:
        os.killpg(process.pid, stop)
    else:
        process.send_signal(stop)
    _, stderr = process.communicate(timeout=180)
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "interrupted: no output was written"
    # Ray's driver would have taken SIGTERM over: a C++ stack dump, then exit 15 or 134.
    assert "SIGTERM received" not in stderr and "Traceback" not in stderr, stderr
    (parent,), (child,) = sweep_runs(sweep_project)
    assert parent.info.status == child.info.status == "KILLED"
    assert child.data.tags["sweep_trial"] == "0"
    assert not (sweep_project / "reports").exists()
    assert parent.data.params["name"] == "tiny-search"
    logs = [path for path in ray_temp.rglob("*") if path.is_file() and not path.is_symlink()]
    assert logs and not [path for path in logs if canary.encode() in path.read_bytes()]
    shutil.rmtree(ray_temp, ignore_errors=True)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.ray
def test_a_sigkilled_sweep_leaves_runs_that_cleanup_runs_closes(sweep_project, start_sweep):
    long_sweep(sweep_project)
    database = create_store(sweep_project)
    process = start_sweep(sweep_project)
    wait_for_epochs(database, process)
    # As `kill -9 -PGID` or an OOM kill of the job: the driver and Ray's head processes (its
    # process group) die at once, with no chance to end a run.
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    (parent,), (child,) = sweep_runs(sweep_project)
    assert parent.info.status == child.info.status == "RUNNING"
    # The trial's worker, in a process group of its own, dies with its raylet: nothing goes on
    # training or logging into the runs that cleanup-runs is about to close.
    worker = int(child.data.tags["ray_worker_pid"])
    deadline = time.monotonic() + 60
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(worker), "the trial's worker outlived its driver"

    cleanup = subprocess.run(
        [CLI, "cleanup-runs"], cwd=sweep_project, env=stage_env(), capture_output=True, text=True
    )
    assert cleanup.returncode == 0, cleanup.stderr
    assert cleanup.stdout.startswith("closed 2 runs")
    (parent,), (child,) = sweep_runs(sweep_project)
    assert parent.info.status == child.info.status == "KILLED"
    assert all("fashion_mlp.closed_by" in run.data.tags for run in (parent, child))


@pytest.mark.ray
def test_the_next_sweep_closes_the_runs_a_dead_driver_left(sweep_project, embedded_ray):
    """What a SIGKILLed driver leaves (the test above): its parent and trial runs, RUNNING,
    with the owner tags of a process that is gone; here of another sweep."""
    import mlflow
    from typer.testing import CliRunner

    from fashion_mlp.cli import app
    from fashion_mlp.tracking.runs import Runs

    # The owner tags of a process that ran on this machine and is gone.
    identity = "import json; from fashion_mlp.tracking.orphans import owner_tags; "
    identity += "print(json.dumps(owner_tags()))"
    gone = subprocess.run([sys.executable, "-c", identity], capture_output=True, check=True)
    dead = json.loads(gone.stdout)
    store = f"sqlite:///{sweep_project / 'mlflow.db'}"
    runs = Runs(Store(TrackingTarget(store, "fashion-mlp")))
    with runs.start("old-search", "sweep", {}, {}, owner=dead, ends=False) as old_parent:
        old_parent_id = old_parent.wait()
    with runs.start(
        "old-search-0", "sweep-trial", {}, {}, parent=old_parent_id, owner=dead, ends=False
    ) as old_child:
        old_child_id = old_child.wait()
    edit_sweep(
        sweep_project,
        trials=1,
        base={"hidden": [32], "activation": "relu", "epochs": 1},
        space={"variant": {"grid": [GOOD]}},
    )
    result = CliRunner().invoke(app, ["sweep", "--no-progress"])
    assert result.exit_code == 0, result.output
    client = mlflow.MlflowClient(store)
    for run_id in (old_parent_id, old_child_id):
        run = client.get_run(run_id)
        assert run.info.status == "KILLED" and "fashion_mlp.closed_by" in run.data.tags


@pytest.mark.ray
@pytest.mark.server
@pytest.mark.parametrize(
    "stop",
    [signal.SIGKILL, signal.SIGSTOP],
    # SIGKILL: connections are refused at once. SIGSTOP: the server accepts and never answers,
    # so each call waits out MLflow's timeout and retries (about 48 s with HTTP_LIMITS; the test
    # sets a 5 s timeout, as a user may, so that it waits about 18 s).
    ids=["killed", "hung"],
)
def test_a_tracking_server_that_dies_mid_sweep_stops_it_with_one_line(
    sweep_project, start_sweep, tmp_path, stop
):
    """Within 60 s of the first failed call (120 s after the server stops, at most): one line,
    exit 1, no Ray process left; the runs stay open for cleanup-runs, which closes them."""
    long_sweep(sweep_project)
    backend, port = tmp_path / "server.db", free_port()
    server = subprocess.Popen(
        mlflow_server_command(f"sqlite:///{backend}", tmp_path / "artifacts", port),
        cwd=tmp_path,  # not in the project, where only the sweep's processes run
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: responds(f"{url}/health"), "mlflow server", None, process=server)
        process = start_sweep(
            sweep_project, MLFLOW_TRACKING_URI=url, MLFLOW_HTTP_REQUEST_TIMEOUT="5"
        )
        wait_for_epochs(backend, process, epochs=1)
        os.killpg(server.pid, stop)
        stopped = time.monotonic()
        _, stderr = process.communicate(timeout=120)
        assert time.monotonic() - stopped < 120
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    assert process.returncode == 1, stderr
    # One line, not a traceback per trial and retry (Tune logs each failed trial's).
    (last,) = stderr.strip().splitlines()
    assert last.startswith(f"error: MLflow tracking store {url}: cannot reach the server"), last
    assert last.endswith("`fashion-mlp cleanup-runs` closes the runs this sweep left open")
    assert not processes_in(sweep_project), "Ray processes outlived the sweep"
    # Its runs stay open in the server's database; cleanup-runs on that store closes them.
    cleanup = subprocess.run(
        [CLI, "cleanup-runs"],
        cwd=sweep_project,
        env=stage_env(MLFLOW_TRACKING_URI=f"sqlite:///{backend}"),
        capture_output=True,
        text=True,
    )
    assert cleanup.returncode == 0, cleanup.stderr
    with sqlite3.connect(backend) as connection:
        statuses = connection.execute("SELECT status FROM runs").fetchall()
    assert statuses and {status for (status,) in statuses} == {"KILLED"}


def processes_in(folder: Path) -> list[str]:
    """Processes other than this one still running in `folder` (a sweep's Ray workers run
    where it ran)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if process.pid == os.getpid():
            continue
        try:
            running = process.status() != psutil.STATUS_ZOMBIE  # a zombie is over, unreaped
            if running and Path(process.cwd()).is_relative_to(folder):
                found.append(" ".join(process.info["cmdline"] or [])[:100])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.mark.ray  # imports Ray (4 s), though it refuses before starting one
def test_a_trial_that_needs_more_cpus_than_the_machine_has_is_refused_before_any_run(
    sweep_project,
):
    cores = len(os.sched_getaffinity(0))
    edit_sweep(sweep_project, cpus_per_trial=cores + 1)
    result = subprocess.run(
        [CLI, "sweep", "--no-progress"],
        cwd=sweep_project,
        env=stage_env(FASHION_MLP_CORE_REGISTRY=str(sweep_project / "cores")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: params.yaml: sweep.cpus_per_trial = {cores + 1}: this machine has {cores} "
        f"{'CPU' if cores == 1 else 'CPUs'}, so no trial could ever start; lower it"
    )
    with contextlib.suppress(sqlite3.Error), sqlite3.connect(sweep_project / "mlflow.db") as db:
        assert db.execute("SELECT COUNT(*) FROM runs").fetchone() == (0,)
