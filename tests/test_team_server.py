"""The team setup: the tiny pipeline, unchanged, against a real `mlflow server` on PostgreSQL.

A PostgreSQL cluster (Debian's `postgresql` package) and an `mlflow server` that proxies
artifacts start on 127.0.0.1 for this module; `dvc repro` then runs with MLFLOW_TRACKING_URI
pointing at the server, and the runs, metrics and model are read back through the client.
Skipped where PostgreSQL is not installed, except under CI (`.ci/run` installs it).
"""

import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import (
    VENV_BIN,
    free_port,
    stage_env,
    tiny_params,
    train_at_once,
    write_params,
    write_synthetic_raw,
)
from fashion_mlp.preprocess import preprocess
from test_dvc_pipeline import make_project, run, stages_run

pytestmark = pytest.mark.slow
POSTGRES_BINARIES = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
MLFLOW = str(VENV_BIN / "mlflow")


def as_postgres_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root; CI runs as root."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def wait_until(ready, what: str, log: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not start in {seconds} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def postgres():
    if not POSTGRES_BINARIES:
        reason = "PostgreSQL server not installed (apt-get install postgresql)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the team-server test: {reason}")
        pytest.skip(reason)
    binaries = POSTGRES_BINARIES[-1].parent
    # Not under pytest's tmp_path: its parents are private to root, and the server runs as
    # the postgres user.
    folder = Path(tempfile.mkdtemp(prefix="fashion-mlp-postgres-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    data, log, port = folder / "data", folder / "server.log", free_port()
    subprocess.run(
        as_postgres_user(
            [str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "mlflow", "--no-sync"]
        ),
        check=True,
        capture_output=True,
    )
    subprocess.run(
        as_postgres_user(
            [
                str(binaries / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(log),
                "-w",
                "-o",
                f"-p {port} -k {folder} -c listen_addresses=127.0.0.1",
                "start",
            ]
        ),
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://mlflow@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            as_postgres_user(
                [str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]
            ),
            capture_output=True,
        )
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow-server")
    port, log = free_port(), folder / "server.log"
    with log.open("w") as stream:
        process = subprocess.Popen(
            [
                MLFLOW,
                "server",
                "--backend-store-uri",
                postgres,
                "--artifacts-destination",
                str(folder / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            stdout=stream,
            stderr=subprocess.STDOUT,
        )
    uri = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    wait_until(healthy, "mlflow server", log)
    yield uri
    process.terminate()
    process.wait(timeout=30)


def test_the_pipeline_runs_unchanged_against_a_postgres_backed_server(server, tmp_path):
    import mlflow
    import torch

    checksums = write_synthetic_raw(tmp_path / "source")
    project = make_project(
        tmp_path / "project", tiny_params(tmp_path / "source", checksums, "sqlite:///mlflow.db")
    )
    output = run(["dvc", "repro"], project, env={"MLFLOW_TRACKING_URI": server})
    assert {"train@mlp1", "train@mlp2", "evaluate@mlp1", "register"} <= stages_run(output)
    assert not (project / "mlflow.db").exists(), "the server, not the params' sqlite, is used"

    client = mlflow.MlflowClient(tracking_uri=server)
    mlflow.set_tracking_uri(server)
    runs = mlflow.search_runs(experiment_names=["fashion-mlp"], output_format="list")
    assert sorted(tracked.info.run_name for tracked in runs) == ["mlp1", "mlp2"]
    for tracked in runs:
        run_id = tracked.info.run_id
        assert tracked.info.status == "FINISHED"
        assert tracked.data.params["hidden"] in {"32", "32,16"}
        for key in ("train_loss", "train_acc", "test_acc", "epoch_seconds"):
            assert [m.step for m in client.get_metric_history(run_id, key)] == [1, 2]
        assert "final_test_loss" in tracked.data.metrics  # logged by evaluate, same run
        artifacts = {a.path for a in client.list_artifacts(run_id, "evaluation")}
        assert "evaluation/confusion_matrix.png" in artifacts
        model = mlflow.pytorch.load_model(f"runs:/{run_id}/model")  # through the proxy
        assert model(torch.rand(3, 28, 28)).shape == (3, 10)
    champion = client.get_model_version_by_alias("fashion-mlp", "champion")
    assert champion.run_id in {tracked.info.run_id for tracked in runs}


def test_parallel_stages_share_one_new_experiment_on_the_server(server, tmp_path):
    """Three train stages at once, each finding no experiment and creating it: one wins, the
    others use it, and every run arrives."""
    import mlflow

    checksums = write_synthetic_raw(tmp_path / "source")
    params = tiny_params(tmp_path / "source", checksums, "sqlite:///unused.db")
    params["mlflow"]["experiment"] = "parallel-on-a-fresh-server"
    write_params(tmp_path / "params.yaml", params)
    preprocess(tmp_path / "source", tmp_path / "data/processed")
    train_at_once(
        [("mlp1", copy) for copy in ("a", "b", "c")],
        tmp_path,
        stage_env(MLFLOW_TRACKING_URI=server),
    )
    mlflow.set_tracking_uri(server)
    runs = mlflow.search_runs(
        experiment_names=[params["mlflow"]["experiment"]], output_format="list"
    )
    assert [run.info.status for run in runs] == ["FINISHED"] * 3
