"""MLflow bookkeeping: where runs go, how a run is opened, resumed and filled.

The embedded default is `sqlite:///mlflow.db` (MLflow 3's own default). A relative SQLite path is
resolved against the project root, not the working directory, and its artifacts go beside it in
`mlartifacts/`, so every stage (and `make ui`) sees one store wherever it runs from.

A tracking server that is down or refusing fails a stage in seconds: MLflow's own HTTP defaults
(7 retries with exponential backoff, 120 s timeout) would keep a stage waiting for minutes. Our
bounds apply only where the environment does not set MLflow's variables itself.
"""

import os
import re
import subprocess
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
    with _store_setup_lock(target):
        try:
            experiment = mlflow.get_experiment_by_name(target.experiment)
            return (experiment or _create_experiment(target)).experiment_id
        except Exception as err:
            raise PipelineError(f"MLflow tracking store {target.uri}: {_reason(err)}") from None


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
    database.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(database.with_name(database.name + ".lock"))


def _reason(err: Exception) -> str:
    """The useful end of MLflow's error chain, on one line."""
    text = " ".join(str(err).split()) or type(err).__name__
    refused = re.search(r"too many (\d{3}) error responses", text)
    if refused:
        return f"the server keeps answering HTTP {refused.group(1)} (retries exhausted)"
    for cause in ("Connection refused", "Name or service not known", "timed out"):
        if cause in text:
            return f"cannot reach the server ({cause}); is it running? (retries exhausted)"
    return text[:300]


@contextmanager
def start_run(
    target: TrackingTarget, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str]
) -> Iterator[Any]:
    """A new run in the target experiment, ended FINISHED, FAILED on an error, KILLED on Ctrl-C.

    A store that fails mid-run (a server going down) becomes a one-line PipelineError naming it.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    experiment_id = connect(target)
    try:
        run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=dict(tags))
        mlflow.log_params(dict(params))
    except MlflowException as err:
        raise PipelineError(f"MLflow tracking store {target.uri}: {_reason(err)}") from None
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"  # MLflow alone would call an interrupted run FAILED
        raise
    except MlflowException as err:
        raise PipelineError(f"MLflow tracking store {target.uri}: {_reason(err)}") from None
    finally:
        try:
            mlflow.end_run(status)
        except MlflowException as err:
            # Only a run that succeeded so far reports this; otherwise the first error wins.
            if status == "FINISHED":
                raise PipelineError(f"MLflow tracking store {target.uri}: {_reason(err)}") from None


@contextmanager
def resume_run(target: TrackingTarget, run_id: str) -> Iterator[Any]:
    """Reopen an earlier run (train's) so evaluation lands beside the training curves."""
    import mlflow

    connect(target)
    try:
        mlflow.get_run(run_id)
    except Exception:
        raise PipelineError(
            f"MLflow run {run_id} not found in {target.uri}; retrain to create it "
            "(`dvc repro --force train@MODEL`)"
        ) from None
    with mlflow.start_run(run_id=run_id) as run:
        yield run


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    import mlflow

    mlflow.log_metrics(dict(metrics), step=step)
