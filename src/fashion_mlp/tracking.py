"""MLflow bookkeeping: where runs go, how a run is opened, filled, closed and cleaned up.

The embedded default is `sqlite:///mlflow.db` (MLflow 3's own default). A relative SQLite path is
resolved against the project root, not the working directory, and its artifacts go beside it in
`mlartifacts/`, so every stage (and `make ui`) sees one store wherever it runs from.

A tracking server that is down, refusing or rejecting our credentials fails a stage in seconds:
MLflow's own HTTP defaults (7 retries with exponential backoff, 120 s timeout) would keep a stage
waiting for minutes. Our bounds apply only where the environment does not set MLflow's variables.

Every run records who runs it (`fashion_mlp.host`, `fashion_mlp.pid`, `fashion_mlp.pid_started`),
so a run whose process died without closing it (SIGKILL, an OOM kill, a power cut) is found
and closed as KILLED by the next training of the same model and by `fashion-mlp cleanup-runs`.
"""

import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fashion_mlp.errors import PipelineError

SQLITE_PREFIX = "sqlite:///"
HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}
HOST_TAG, PID_TAG, STARTED_TAG = "fashion_mlp.host", "fashion_mlp.pid", "fashion_mlp.pid_started"
CLOSED_TAG = "fashion_mlp.closed_by"
# The MLflow UI opens an experiment on its GenAI overview unless told otherwise.
TRAINING_VIEW = "?workflowType=machine_learning"


@dataclass(frozen=True)
class TrackingTarget:
    uri: str
    experiment: str

    @property
    def artifact_location(self) -> str | None:
        """Artifacts of a local SQLite store live beside the database; a server decides its own."""
        if not self.uri.startswith(SQLITE_PREFIX):
            return None
        return (Path(self.uri.removeprefix(SQLITE_PREFIX)).parent / "mlartifacts").as_uri()


@dataclass(frozen=True)
class DatasetRecord:
    """One logged data input of a run: what MLflow's Datasets panel shows."""

    name: str
    digest: str
    source: dict[str, str]
    schema: dict[str, Any]
    profile: dict[str, Any]
    context: str  # training | validation | testing


def resolve_tracking_uri(uri: str, root: Path) -> str:
    """Make a relative `sqlite:///file.db` absolute against `root`; leave other URIs alone."""
    if uri.startswith(SQLITE_PREFIX):
        path = Path(uri.removeprefix(SQLITE_PREFIX))
        if not path.is_absolute():
            return SQLITE_PREFIX + str((Path(root) / path).resolve())
    return uri


def git_commit(root: Path) -> str | None:
    """The commit the code runs from, or None outside a git checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return result.stdout.strip()


def experiment_url(server: str, experiment_id: str) -> str:
    """The link that opens an experiment's training runs in the MLflow UI."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}{TRAINING_VIEW}"


def connect(target: TrackingTarget) -> str:
    """Point MLflow at the store and return the experiment id, creating the experiment once.

    For SQLite, the first connection creates the tables (MLflow's migrations) and maybe the
    experiment; parallel stages on a fresh store (`dvc queue start -j 2`) would race to do it
    and fail with "table already exists". A lock file beside the database serialises this step.
    """
    import mlflow

    for variable, value in HTTP_LIMITS.items():
        os.environ.setdefault(variable, value)
    mlflow.set_tracking_uri(target.uri)
    try:
        with _store_setup_lock(target):
            experiment = mlflow.get_experiment_by_name(target.experiment)
            experiment = experiment or _create_experiment(target)
    except PipelineError:
        raise
    except Exception as err:
        raise store_error(target, err) from None
    if experiment.lifecycle_stage == "deleted":
        raise PipelineError(
            f"MLflow experiment {target.experiment!r} in {target.uri} is deleted; restore it with "
            f"`MLFLOW_TRACKING_URI={target.uri} mlflow experiments restore --experiment-id "
            f"{experiment.experiment_id}`, or set mlflow.experiment to another name"
        )
    return experiment.experiment_id


def _create_experiment(target: TrackingTarget) -> Any:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow.create_experiment(target.experiment, artifact_location=target.artifact_location)
    except MlflowException as err:
        # Another stage created it since we looked: a server has no lock file to serialise this.
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    return mlflow.get_experiment_by_name(target.experiment)


def _store_setup_lock(target: TrackingTarget) -> AbstractContextManager:
    if not target.uri.startswith(SQLITE_PREFIX):
        return nullcontext()  # a server serialises its own setup
    from filelock import FileLock

    database = Path(target.uri.removeprefix(SQLITE_PREFIX))
    try:
        database.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise store_error(target, err) from None
    return FileLock(database.with_name(database.name + ".lock"))


def store_error(target: TrackingTarget, err: BaseException) -> PipelineError:
    """One line for a store that fails: the URI, what went wrong and what to do."""
    return PipelineError(f"MLflow tracking store {target.uri}: {_reason(err)}")


def _reason(err: BaseException) -> str:
    """The useful end of MLflow's error chain, on one line."""
    text = " ".join(str(err).split()) or type(err).__name__
    refused = re.search(r"too many (\d{3}) error responses", text)
    if refused:
        return f"the server keeps answering HTTP {refused.group(1)} (retries exhausted)"
    if "error code 401" in text or "status code 401" in text:
        return (
            "the server refused the credentials (HTTP 401); set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD to your account on it"
        )
    if "error code 403" in text or "PERMISSION_DENIED" in text:
        user = os.environ.get("MLFLOW_TRACKING_USERNAME", "(anonymous)")
        return (
            f"permission denied for user {user} (HTTP 403); ask the server's admin to run "
            "`fashion-mlp team-setup` or grant you EDIT on the experiment"
        )
    for cause, hint in (
        ("readonly database", "the database file is read-only; make it writable"),
        ("disk is full", "the disk holding it is full; free space and rerun"),
        ("unable to open database file", "its folder is missing or not writable"),
        ("No space left on device", "the disk holding it is full; free space and rerun"),
        ("Read-only file system", "it lies on a read-only file system"),
    ):
        if cause in text:
            return hint
    for cause in ("Connection refused", "Name or service not known", "timed out"):
        if cause in text:
            return f"cannot reach the server ({cause}); is it running? (retries exhausted)"
    return text[:300]


def owner_tags() -> dict[str, str]:
    """Who runs this process: enough to tell later whether it is still alive."""
    import psutil

    return {
        HOST_TAG: socket.gethostname(),
        PID_TAG: str(os.getpid()),
        STARTED_TAG: repr(psutil.Process().create_time()),
    }


def owner_is_gone(tags: Mapping[str, str]) -> bool:
    """True for a run started on this host by a process that no longer exists (a reused pid
    counts as gone: its start time differs). Runs of other hosts are never judged."""
    import psutil

    if tags.get(HOST_TAG) != socket.gethostname() or PID_TAG not in tags:
        return False
    try:
        process = psutil.Process(int(tags[PID_TAG]))
        return repr(process.create_time()) != tags.get(STARTED_TAG)
    except (psutil.NoSuchProcess, ValueError):
        return True


@contextmanager
def start_run(
    target: TrackingTarget, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str]
) -> Iterator[Any]:
    """A new run in the target experiment, ended FINISHED, FAILED on an error, KILLED on Ctrl-C,
    SIGTERM or SIGHUP. A store that fails mid-run becomes a one-line PipelineError naming it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    experiment_id = connect(target)
    try:
        run = mlflow.start_run(
            experiment_id=experiment_id, run_name=run_name, tags={**tags, **owner_tags()}
        )
        mlflow.log_params(dict(params))
    except MlflowException as err:
        raise store_error(target, err) from None
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"  # MLflow alone would call an interrupted run FAILED
        raise
    except (MlflowException, OSError) as err:
        raise store_error(target, err) from None
    finally:
        try:
            mlflow.end_run(status)
        except (MlflowException, OSError) as err:
            # Only a run that succeeded so far reports this; otherwise the first error wins.
            if status == "FINISHED":
                raise store_error(target, err) from None


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    import mlflow

    mlflow.log_metrics(dict(metrics), step=step)


def set_tags(tags: Mapping[str, str]) -> None:
    import mlflow

    mlflow.set_tags(dict(tags))


def log_datasets(run_id: str, datasets: list[DatasetRecord]) -> None:
    """Log data inputs, shown in the run's Datasets panel and the runs table's Dataset column."""
    import mlflow
    from mlflow.entities import Dataset, DatasetInput, InputTag

    inputs = [
        DatasetInput(
            Dataset(
                name=record.name,
                digest=record.digest,
                source_type="dvc",
                source=json.dumps(record.source),
                schema=json.dumps(record.schema),
                profile=json.dumps(record.profile),
            ),
            tags=[InputTag(key="mlflow.data.context", value=record.context)],
        )
        for record in datasets
    ]
    mlflow.MlflowClient().log_inputs(run_id, datasets=inputs)


def training_run(target: TrackingTarget, run_id: str, model_name: str) -> Any:
    """The run `run.json` names, checked: it exists, is not deleted, and trained `model_name`
    in the configured experiment. Anything else would put one model's evaluation on another."""
    import mlflow
    from mlflow.exceptions import MlflowException

    experiment_id = connect(target)
    retrain = f"retrain to create it (`dvc repro --force train@{model_name}`)"
    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise PipelineError(
                f"MLflow run {run_id} not found in {target.uri}; {retrain}"
            ) from None
        raise store_error(target, err) from None
    if run.info.lifecycle_stage == "deleted":
        raise PipelineError(
            f"MLflow run {run_id} in {target.uri} is deleted; restore it with "
            f"`mlflow runs restore --run-id {run_id}`, or {retrain}"
        )
    trained = run.data.params.get("model")
    if trained != model_name or run.info.experiment_id != experiment_id:
        raise PipelineError(
            f"MLflow run {run_id} trained {trained!r} in experiment {run.info.experiment_id}, "
            f"not {model_name!r} in {target.experiment!r}; the run file is not this model's: "
            f"{retrain}"
        )
    return run


def log_to_run(
    target: TrackingTarget,
    run_id: str,
    metrics: Mapping[str, float],
    artifacts: list[Path],
    artifact_path: str,
) -> None:
    """Add metrics and files to a finished run without reopening it, so its start and end
    times stay those of the training that produced it."""
    import mlflow
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    now = int(time.time() * 1000)
    try:
        client.log_batch(
            run_id, metrics=[Metric(key, value, now, 0) for key, value in metrics.items()]
        )
        for artifact in artifacts:
            client.log_artifact(run_id, str(artifact), artifact_path=artifact_path)
    except (MlflowException, OSError) as err:
        raise store_error(target, err) from None


def close_orphaned_runs(target: TrackingTarget, run_name: str | None = None) -> list[str]:
    """Mark KILLED every RUNNING run of the experiment (named `run_name`, if given) whose
    process on this host is gone, and fail the logged models it left PENDING; their ids."""
    import mlflow
    from mlflow.entities import LoggedModelStatus, RunStatus
    from mlflow.exceptions import MlflowException

    experiment_id = connect(target)
    client = mlflow.MlflowClient()
    query = "attributes.status = 'RUNNING'"
    if run_name is not None:
        query += f" and attributes.run_name = '{run_name}'"
    closed = []
    try:
        for run in client.search_runs([experiment_id], query, max_results=1000):
            if not owner_is_gone(run.data.tags):
                continue
            run_id = run.info.run_id
            client.set_tag(run_id, CLOSED_TAG, "its process was gone (found by fashion-mlp)")
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
            pending = client.search_logged_models(
                [experiment_id], filter_string=f"source_run_id = '{run_id}'"
            )
            for logged in pending:
                if logged.status == LoggedModelStatus.PENDING:
                    client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
            closed.append(run_id)
    except MlflowException as err:
        raise store_error(target, err) from None
    return closed
