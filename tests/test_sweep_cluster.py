"""A real multi-node Ray cluster on one machine: `ray start --head` and a second node started
with `ray start --address`, each with its own CPU, node address and a small object store. Ray
listens on every address of its network namespace, so the whole cluster, the sweep driver and
its MLflow server run in a network namespace this module creates, whose only interface is its
own loopback (head 127.0.0.1, second node 127.0.0.2): nothing here can reach another address.

The sweep joins through RAY_ADDRESS and tracks into an `mlflow server` in the namespace (the
test reads its SQLite store from disk). Trials run on both nodes; killing the second node
mid-sweep loses only its running trials, which Ray retries on the head. One cluster for the
module (~20 s to start); the node-loss test runs last, since that node does not come back.
"""

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from helpers.data import sweep_section, tiny_params, write_params, write_synthetic_raw
from helpers.markers import require
from helpers.process import CLI, VENV_BIN, free_port, stage_env, wait_until
from helpers.servers import mlflow_server_command

pytestmark = [pytest.mark.ray, pytest.mark.server]
RAY = str(VENV_BIN / "ray")


@pytest.fixture(scope="module")
def namespace() -> Iterator[list[str]]:
    """A network namespace with only a loopback interface; yields the prefix that runs a
    command inside it."""
    name = f"fashion-mlp-{uuid.uuid4().hex[:8]}"
    created = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    require(created.returncode == 0, f"cannot create a network namespace: {created.stderr}")
    inside = ["ip", "netns", "exec", name]
    try:
        subprocess.run([*inside, "ip", "link", "set", "lo", "up"], check=True)
        yield inside
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def in_namespace(inside: list[str], command: list[str], **popen) -> subprocess.Popen:
    return subprocess.Popen([*inside, *command], start_new_session=True, **popen)


def kill_node(process: subprocess.Popen) -> None:
    """SIGKILL a process and everything it started, as a machine losing power would.

    By process tree, not process group: a trial worker that outlived its raylet in another
    group would go on reporting to the driver directly and finish as if nothing happened.
    """
    try:
        root = psutil.Process(process.pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for member in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    psutil.wait_procs(tree, timeout=10)
    process.wait()


@dataclass
class Cluster:
    inside: list[str]
    address: str
    server: str  # the MLflow server's URI, inside the namespace
    store: Path  # its SQLite backend, read by the test from disk
    worker: subprocess.Popen
    worker_node_id: str


@pytest.fixture(scope="module")
def cluster(namespace, tmp_path_factory) -> Iterator[Cluster]:
    folder = tmp_path_factory.mktemp("cluster")
    env = stage_env(
        RAY_USAGE_STATS_ENABLED="0",
        RAY_AUTH_MODE="token",
        # Notice a dead node in about 1.5 s instead of Ray's default 15 s, so the trials it
        # lost are retried on the head instead of being sent to it again and again.
        RAY_health_check_period_ms="500",
        RAY_health_check_failure_threshold="3",
    )
    processes, temp = [], None
    try:
        store, port = folder / "mlflow.db", free_port()
        processes.append(
            in_namespace(
                namespace,
                mlflow_server_command(f"sqlite:///{store}", folder / "artifacts", port),
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        gcs = free_port()
        # Its own short temp dir (Ray's socket paths must stay short): the cluster's files, and
        # the address file a later plain `ray.init()` would read, stay out of /tmp/ray.
        temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
        common = ["--num-cpus", "1", "--disable-usage-stats", "--block"]
        common += ["--object-store-memory", str(100 * 1024 * 1024), "--temp-dir", temp]
        processes.append(
            in_namespace(
                namespace,
                [
                    RAY,
                    "start",
                    "--head",
                    "--port",
                    str(gcs),
                    "--include-dashboard",
                    "false",
                    *common,
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        address = f"127.0.0.1:{gcs}"
        wait_until(lambda: _nodes(namespace, address, env) is not None, "Ray head", None)
        worker = in_namespace(
            namespace,
            [RAY, "start", "--address", address, "--node-ip-address", "127.0.0.2", *common],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        processes.append(worker)
        wait_until(lambda: len(_nodes(namespace, address, env) or []) == 2, "Ray node 2", None)
        (worker_node,) = [n for n, ip in _nodes(namespace, address, env) if ip == "127.0.0.2"]
        server = f"http://127.0.0.1:{port}"
        wait_until(lambda: _healthy(namespace, server, env), "mlflow server", None)
        yield Cluster(namespace, address, server, store, worker, worker_node)
    finally:
        for process in processes:
            kill_node(process)
        if temp:
            shutil.rmtree(temp, ignore_errors=True)


def _nodes(inside: list[str], address: str, env: dict) -> list[tuple[str, str]] | None:
    """(node id, address) of the cluster's live nodes, asked from inside the namespace."""
    script = (
        f"import json, ray; ray.init(address={address!r}, logging_level='ERROR'); "
        "print(json.dumps([(n['NodeID'], n['NodeManagerAddress']) for n in ray.nodes() "
        "if n['Alive']]))"
    )
    done = subprocess.run(
        [*inside, sys.executable, "-c", script], env=env, capture_output=True, text=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None


def _healthy(inside: list[str], server: str, env: dict) -> bool:
    script = f"import urllib.request; urllib.request.urlopen({server + '/health'!r}, timeout=2)"
    return subprocess.run([*inside, sys.executable, "-c", script], env=env).returncode == 0


def cluster_project(tmp_path: Path, experiment: str, **sweep) -> Path:
    from fashion_mlp.preprocess import preprocess

    checksums = write_synthetic_raw(tmp_path / "source", train_count=400, test_count=100)
    params = tiny_params(tmp_path / "source", checksums, "sqlite:///unused.db")
    params["mlflow"]["experiment"] = experiment
    params["sweep"] = sweep_section(**sweep)
    project = tmp_path / "project"
    project.mkdir()
    write_params(project / "params.yaml", params)
    preprocess(tmp_path / "source", project / "data/processed")
    return project


def start_sweep(project: Path, cluster: Cluster) -> subprocess.Popen:
    env = stage_env(
        RAY_ADDRESS=cluster.address,
        RAY_AUTH_MODE="token",
        MLFLOW_TRACKING_URI=cluster.server,
        FASHION_MLP_CORE_REGISTRY=str(project / "cores"),
    )
    return in_namespace(
        cluster.inside,
        [CLI, "sweep", "--no-progress"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def children(cluster: Cluster, experiment: str) -> list:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{cluster.store}")
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = client.search_runs([found.experiment_id], max_results=1000)
    return [run for run in runs if "mlflow.parentRunId" in run.data.tags]


def test_trials_run_on_both_nodes_and_track_into_the_server(cluster, tmp_path):
    project = cluster_project(
        tmp_path,
        "cluster-sweep",
        trials=4,
        max_concurrent_trials=2,
        space={"lr": {"loguniform": [0.2, 0.6]}},
        base={"hidden": [32], "activation": "relu", "epochs": 3, "batch_size": 4},
    )
    process = start_sweep(project, cluster)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    runs = children(cluster, "cluster-sweep")
    assert len(runs) == 4 and {run.info.status for run in runs} == {"FINISHED"}, stderr
    nodes = {run.data.tags["ray_node_id"] for run in runs}
    assert len(nodes) == 2 and cluster.worker_node_id in nodes
    assert (project / "reports/sweep/best.yaml").exists()


def test_a_trial_that_no_node_can_hold_is_refused_before_any_run(cluster, tmp_path):
    import mlflow

    project = cluster_project(tmp_path, "cluster-too-big", cpus_per_trial=2)
    process = start_sweep(project, cluster)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1, stderr
    assert stderr.strip().splitlines()[-1] == (
        "error: params.yaml: sweep.cpus_per_trial = 2: the largest live Ray node has 1 CPU, so "
        "no trial could ever start; lower it"
    )
    client = mlflow.MlflowClient(f"sqlite:///{cluster.store}")
    found = client.get_experiment_by_name("cluster-too-big")
    assert found is None or not client.search_runs([found.experiment_id])


def test_killing_a_node_mid_sweep_loses_only_its_running_trials(cluster, tmp_path):
    import mlflow

    project = cluster_project(
        tmp_path,
        "cluster-node-loss",
        trials=4,
        max_concurrent_trials=2,
        space={"lr": {"loguniform": [0.005, 0.02]}},
        base={"hidden": [32], "activation": "relu", "epochs": 12, "batch_size": 1},
        scheduler={"grace_period": 12, "reduction_factor": 2},  # no early stopping here
    )
    process = start_sweep(project, cluster)
    client = mlflow.MlflowClient(f"sqlite:///{cluster.store}")
    deadline, victim = time.monotonic() + 180, None
    while victim is None and time.monotonic() < deadline:
        for run in children(cluster, "cluster-node-loss"):
            on_second_node = run.data.tags.get("ray_node_id") == cluster.worker_node_id
            if on_second_node and run.info.status == "RUNNING":
                epochs = len(client.get_metric_history(run.info.run_id, "val_acc"))
                if 1 <= epochs <= 6:
                    victim = run
        time.sleep(0.2)
    assert victim is not None, "no trial was seen running on the second node"
    kill_node(cluster.worker)

    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    runs = {run.info.run_id: run for run in children(cluster, "cluster-node-loss")}
    # Every run ends in a final state; the lost trial was retried (on the head) or reported.
    assert len(runs) == 4 and {r.info.status for r in runs.values()} <= {"FINISHED", "FAILED"}
    lost = runs[victim.info.run_id]
    if lost.info.status == "FINISHED":
        assert int(lost.data.tags["fashion_mlp.attempts"]) >= 2
        assert lost.data.tags["ray_node_id"] != cluster.worker_node_id  # finished on the head
    else:
        assert lost.data.tags["sweep_trial_error"]
    steps = [m.step for m in client.get_metric_history(lost.info.run_id, "val_acc")]
    assert steps == sorted(set(steps)), "an epoch was logged twice"
    untouched = [
        r for r in runs.values() if r.data.tags.get("ray_node_id") != cluster.worker_node_id
    ]
    assert untouched and all(r.info.status == "FINISHED" for r in untouched)
