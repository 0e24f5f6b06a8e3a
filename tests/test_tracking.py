"""tracking: one store wherever a stage runs; a down or refusing server fails a stage fast."""

import subprocess
import sys
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fashion_mlp.cli import app
from fashion_mlp.params import TrackingSettings
from fashion_mlp.preprocess import preprocess
from fashion_mlp.tracking.store import HTTP_LIMITS, experiment_url, resolve_target
from fashion_mlp.tracking.tags import MODEL_TAG
from helpers.data import PROJECT_ROOT, declared_params, isolate, write_params
from helpers.filesystems import fill, make_read_only, small_tmpfs
from helpers.markers import require
from helpers.process import (
    CLI,
    VENV_BIN,
    free_port,
    responds,
    stage_env,
    train_at_once,
    wait_until,
)
from helpers.projects import configure_models
from helpers.proxy import slow_proxy
from helpers.servers import mlflow_server_command


def test_relative_sqlite_resolves_against_the_root_and_servers_are_left_alone(tmp_path):
    settings = TrackingSettings(experiment="e", tracking_uri="sqlite:///mlflow.db")
    assert resolve_target(settings, None, tmp_path).uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert resolve_target(settings, "sqlite:////abs/m.db", tmp_path).uri == "sqlite:////abs/m.db"
    assert resolve_target(settings, "http://host:5000", tmp_path).uri == "http://host:5000"
    # SQLAlchemy decodes %XX in the URL: the project's own path is written encoded.
    odd = tmp_path / "x%41y"
    assert resolve_target(settings, None, odd).uri == f"sqlite:///{tmp_path}/x%2541y/mlflow.db"


@pytest.mark.slow
def test_a_project_in_a_folder_with_a_percent_keeps_its_runs_in_its_own_store(
    tmp_path, monkeypatch, params
):
    """SQLAlchemy decodes %41 in a URL to A: the runs of `x%41y` went into `xAy/mlflow.db`."""
    import mlflow

    project = tmp_path / "x%41y"
    project.mkdir()
    isolate(monkeypatch, project)
    params["train"]["epochs"] = 1
    params["mlflow"]["tracking_uri"] = "sqlite:///mlflow.db"  # in the project folder
    preprocess(params["data"]["local_dir"], project / "data/processed")
    configure_models(write_params(project / "params.yaml", params), project / "configs")
    for stage in (
        ["train", "mlp1", "--config", "configs/mlp1.json", "--no-progress"],
        ["evaluate", "mlp1"],
    ):
        result = CliRunner().invoke(app, stage)
        assert result.exit_code == 0, result.output
    assert (project / "mlflow.db").is_file() and not (tmp_path / "xAy").exists()
    store = "sqlite:///" + urllib.parse.quote(str(project / "mlflow.db"), safe="/")
    (run,) = mlflow.MlflowClient(store).search_runs(
        [mlflow.MlflowClient(store).get_experiment_by_name("fashion-mlp").experiment_id]
    )
    assert run.data.tags["fashion_mlp.evaluated"] == "true"
    artifacts = urllib.parse.unquote(urllib.parse.urlparse(run.info.artifact_uri).path)
    assert Path(artifacts).is_relative_to(project)


def test_credentials_in_the_tracking_uri_are_refused_without_showing_them(workdir, params):
    write_params(workdir / "params.yaml", declared_params(params, "train", "mlp1"))
    uri = "http://alice:s3cret-pw@127.0.0.1:9"
    result = CliRunner().invoke(app, ["--tracking-uri", uri, "train", "mlp1"])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: the tracking URI http://127.0.0.1:9 holds a user name and password; take "
        "them out and set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD instead"
    )
    assert not (workdir / "models").exists()


@pytest.fixture
def remote_listener(tmp_path) -> Iterator[tuple[str, Path]]:
    """A plain TCP listener on a non-loopback address: inside a network namespace the test
    creates, joined to this one by a veth pair. Yields its http:// URL and the file where it
    writes every byte it receives."""
    name = f"fmlp-{uuid.uuid4().hex[:6]}"
    created = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    require(created.returncode == 0, f"cannot create a network namespace: {created.stderr}")
    inside, host_end, ns_end = ["ip", "netns", "exec", name], f"{name}-h", f"{name}-n"
    received = tmp_path / "received"
    listener = None
    try:
        for command in (
            ["ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end],
            ["ip", "link", "set", ns_end, "netns", name],
            ["ip", "addr", "add", "10.231.7.1/30", "dev", host_end],
            ["ip", "link", "set", host_end, "up"],
            [*inside, "ip", "addr", "add", "10.231.7.2/30", "dev", ns_end],
            [*inside, "ip", "link", "set", ns_end, "up"],
        ):
            subprocess.run(command, check=True, capture_output=True)
        script = (
            "import socket, sys\n"
            "server = socket.create_server(('10.231.7.2', 8080))\n"
            "print('listening', flush=True)\n"
            "while True:\n"
            "    connection, _ = server.accept()\n"
            "    connection.settimeout(2)\n"
            "    try:\n"
            "        data = connection.recv(65536)\n"
            "    except OSError:\n"
            "        data = b''\n"
            f"    open({str(received)!r}, 'ab').write(data or b'(connected)')\n"
            "    connection.close()\n"
        )
        listener = subprocess.Popen(
            [*inside, sys.executable, "-c", script], stdout=subprocess.PIPE, text=True
        )
        assert listener.stdout.readline().strip() == "listening"
        yield "http://10.231.7.2:8080", received
    finally:
        if listener is not None:
            listener.kill()
            listener.wait()
        subprocess.run(["ip", "link", "del", host_end], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.mark.server
def test_credentials_are_never_sent_over_plain_http_to_another_host(
    workdir, params, remote_listener
):
    """Refused before the first request, which would carry them in clear; the control shows the
    listener receives what a client sends it."""
    url, received = remote_listener
    write_params(workdir / "params.yaml", params)
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"}

    def cleanup_runs(**credentials: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [CLI, "cleanup-runs"],
            cwd=workdir,
            env=stage_env(MLFLOW_TRACKING_URI=url, **quick, **credentials),
            capture_output=True,
            text=True,
            timeout=60,
        )

    refused = cleanup_runs(MLFLOW_TRACKING_USERNAME="alice", MLFLOW_TRACKING_PASSWORD="s3cret-pw")
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "error: refusing to send MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to "
        f"{url} over plain http://, where anyone on the way can read them; use the server's "
        "https:// address (README: a team tracking server), or unset them for a server without "
        "accounts"
    )
    assert not received.exists()
    control = cleanup_runs()
    assert control.returncode == 1 and received.exists(), control.stderr
    assert b"s3cret" not in received.read_bytes()


@pytest.mark.slow
def test_mlflow_run_of_a_stage_must_use_the_projects_experiment(workdir, params):
    """`mlflow run` opens a run of its own, in "Default" unless told otherwise."""
    import shutil

    import mlflow

    params["train"]["epochs"] = 1
    preprocess(params["data"]["local_dir"], workdir / "data/processed")
    configure_models(write_params(workdir / "params.yaml", params), workdir / "configs")
    shutil.copy(PROJECT_ROOT / "MLproject", workdir)
    uri = params["mlflow"]["tracking_uri"]
    launch = [str(VENV_BIN / "mlflow"), "run", ".", "-e", "train", "--env-manager", "local"]

    def mlflow_run(*args: str) -> subprocess.CompletedProcess:
        env = stage_env(MLFLOW_TRACKING_URI=uri)
        return subprocess.run(
            [*launch, *args], cwd=workdir, env=env, capture_output=True, text=True
        )

    refused = mlflow_run()
    assert refused.returncode != 0
    assert "epoch 1/" not in refused.stdout + refused.stderr, "refused only after training"
    (line,) = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert line.endswith(
        "in experiment 'Default', but this project tracks into 'fashion-mlp'; rerun it with "
        "--experiment-name fashion-mlp"
    )
    assert not (workdir / "models").exists()
    assert mlflow_run("--experiment-name", "fashion-mlp").returncode == 0
    client = mlflow.MlflowClient(uri)
    ours = client.get_experiment_by_name("fashion-mlp").experiment_id
    trained = client.search_runs([ours], "tags.`fashion_mlp.stage` = 'train'")
    assert [run.info.status for run in trained] == ["FINISHED"]


def test_links_open_the_training_runs_not_the_genai_overview():
    assert experiment_url("http://127.0.0.1:5000/", "3") == (
        "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning"
    )


def train_against(
    uri: str, workdir: Path, params: dict, *args: str, **env: str
) -> subprocess.CompletedProcess:
    """`fashion-mlp train mlp1` in a fresh process (MLflow's HTTP settings are per process)."""
    write_params(workdir / "params.yaml", params)
    if not (workdir / "data/processed").exists():
        preprocess(params["data"]["local_dir"], workdir / "data/processed")
        configure_models(workdir / "params.yaml", workdir / "configs")
    write_params(workdir / "params.yaml", declared_params(params, "train", "mlp1"))
    # stage_env drops MLFLOW_* variables, so our HTTP_LIMITS defaults are what applies.
    env = stage_env(MLFLOW_TRACKING_URI=uri, **env)
    # The timeout only guards the test run against a hang; the bound is in the retry count.
    return subprocess.run(
        [CLI, "train", "mlp1", "--config", "configs/mlp1.json", "--no-progress", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_an_unreachable_server_fails_the_stage_with_the_uri_and_no_output(workdir, params):
    uri = f"http://127.0.0.1:{free_port()}"
    result = train_against(uri, workdir, params)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: MLflow tracking store {uri}: cannot reach the server (Connection refused); "
        "is it running? (retries exhausted)"
    ]
    assert not (workdir / "models").exists()


class Refusing(BaseHTTPRequestHandler):
    """Answers every request with 503, and counts them."""

    requests = 0

    def do_GET(self):
        type(self).requests += 1
        self.send_response(503)
        self.end_headers()

    do_POST = do_GET

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_a_refusing_server_is_retried_a_bounded_number_of_times(workdir, params):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        result = train_against(uri, workdir, params)
    finally:
        server.shutdown()
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: MLflow tracking store {uri}: the server keeps answering HTTP 503 "
        "(retries exhausted)"
    ]
    assert Refusing.requests == 1 + int(HTTP_LIMITS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
    assert not (workdir / "models").exists()


@pytest.mark.slow
def test_parallel_stages_on_one_sqlite_store_lose_no_run_and_no_metric_step(workdir, params):
    """Four train stages at once (as `dvc queue start -j 4` runs them) on a fresh store."""
    import mlflow

    params["train"]["epochs"] = 5
    write_params(workdir / "params.yaml", params)
    preprocess(params["data"]["local_dir"], workdir / "data/processed")
    configure_models(workdir / "params.yaml", workdir / "configs")
    train_at_once(
        [("mlp1", "a"), ("mlp2", "b"), ("mlp1", "c"), ("mlp2", "d")], workdir, stage_env()
    )

    mlflow.set_tracking_uri(params["mlflow"]["tracking_uri"])
    client = mlflow.MlflowClient()
    runs = mlflow.search_runs(experiment_names=["fashion-mlp"], output_format="list")
    assert sorted(run.data.tags[MODEL_TAG] for run in runs) == ["mlp1", "mlp1", "mlp2", "mlp2"]
    for run in runs:
        assert run.info.status == "FINISHED"
        for key in ("train_loss", "train_acc", "test_acc", "lr", "epoch_seconds"):
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
            assert steps == [1, 2, 3, 4, 5], (run.data.tags[MODEL_TAG], key)


def only_line(result: subprocess.CompletedProcess) -> str:
    """The one error line (MLflow may log its own INFO lines when it creates a store)."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.stderr.strip().endswith(line)
    return line


def runs_of(store: str) -> list:
    import mlflow

    mlflow.set_tracking_uri(store)
    return mlflow.search_runs(experiment_names=["fashion-mlp"], output_format="list")


@pytest.mark.slow
def test_a_soft_deleted_experiment_is_named_with_how_to_restore_it(workdir, params):
    import mlflow

    store = params["mlflow"]["tracking_uri"]
    mlflow.set_tracking_uri(store)
    experiment = mlflow.create_experiment("fashion-mlp")
    mlflow.delete_experiment(experiment)
    line = only_line(train_against(store, workdir, params))
    assert line == (
        f"error: MLflow experiment 'fashion-mlp' in {store} is deleted; restore it with "
        f"`MLFLOW_TRACKING_URI={store} mlflow experiments restore --experiment-id {experiment}`, "
        "or set mlflow.experiment to another name"
    )
    assert not (workdir / "models").exists()


@pytest.mark.slow
def test_a_full_disk_under_the_outputs_is_one_line_and_leaves_nothing(workdir, params):
    store = params["mlflow"]["tracking_uri"]
    with small_tmpfs(workdir / "small", "64k") as small:
        result = train_against(store, workdir, params, "--out-dir", str(small / "mlp1"))
        line = only_line(result)
        assert line == (
            f"error: {small / 'mlp1' / 'model.safetensors'}: no space left on the disk holding it; "
            "free space and rerun"
        )
        assert [path.name for path in small.rglob("*") if path.is_file()] == []
    (run,) = runs_of(store)
    assert run.info.status == "FAILED"


@pytest.mark.slow
def test_a_full_disk_under_the_store_is_one_line(workdir, params):
    with small_tmpfs(workdir / "store", "4m") as folder:
        store = f"sqlite:///{folder / 'mlflow.db'}"
        assert train_against(store, workdir, params).returncode == 0  # creates the store
        fill(folder)
        line = only_line(train_against(store, workdir, params, "--out-dir", "models/again"))
        assert line.startswith(f"error: MLflow tracking store {store}: ")
        assert "the disk holding it is full; free space and rerun" in line
        assert not (workdir / "models/again").exists()


@pytest.mark.slow
def test_a_read_only_store_is_one_line(workdir, params):
    with small_tmpfs(workdir / "store", "4m") as folder:
        store = f"sqlite:///{folder / 'mlflow.db'}"
        assert train_against(store, workdir, params).returncode == 0
        make_read_only(folder)
        line = only_line(train_against(store, workdir, params, "--out-dir", "models/again"))
        assert line.startswith(f"error: MLflow tracking store {store}: ")
        assert line.endswith(
            (
                "the database file is read-only; make it writable",
                "it lies on a read-only file system",
            )
        )
        assert not (workdir / "models/again").exists()


SLOW_WRITES = {
    "/api/2.0/mlflow/runs/create",
    "/api/2.0/mlflow/logged-models",
    "/api/2.0/mlflow/model-versions/create",
}


@pytest.mark.server
def test_writes_retried_after_a_slow_answer_leave_no_duplicates(workdir, params, tmp_path):
    """The server makes the run, the model and the registry version, but answers after the
    client's timeout; the client retries and the server makes each a second time."""
    import mlflow

    port = free_port()
    log = tmp_path / "server.log"
    backend = f"sqlite:///{tmp_path / 'server.db'}"
    with open(log, "w") as sink:
        server = subprocess.Popen(
            mlflow_server_command(backend, tmp_path / "artifacts", port),
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=stage_env(),
        )
    try:
        wait_until(lambda: responds(f"http://127.0.0.1:{port}/health"), "mlflow server", log)
        params["train"]["epochs"] = 1
        params["mlflow"]["champion"] = "mlp1"
        preprocess(params["data"]["local_dir"], workdir / "data/processed")
        configure_models(write_params(workdir / "params.yaml", params), workdir / "configs")
        with slow_proxy(port, SLOW_WRITES, delay=3) as (proxy, seen):
            env = stage_env(MLFLOW_TRACKING_URI=proxy, MLFLOW_HTTP_REQUEST_TIMEOUT="1")
            for stage in (
                ["train", "mlp1", "--config", "configs/mlp1.json", "--no-progress"],
                ["evaluate", "mlp1"],
                ["register"],
            ):
                done = subprocess.run([CLI, *stage], cwd=workdir, env=env, capture_output=True)
                assert done.returncode == 0, done.stderr
        assert all(seen[path] == 2 for path in SLOW_WRITES), seen  # each create was retried

        client = mlflow.MlflowClient(f"http://127.0.0.1:{port}")
        experiment = client.get_experiment_by_name("fashion-mlp").experiment_id
        (run,) = client.search_runs([experiment])
        assert run.info.status == "FINISHED"
        (model,) = client.search_logged_models([experiment])
        assert model.source_run_id == run.info.run_id
        (version,) = client.search_model_versions("name = 'fashion-mlp'")
        assert client.get_model_version_by_alias("fashion-mlp", "champion").version == (
            version.version
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
