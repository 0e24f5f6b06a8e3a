"""Runs: how a run is opened, filled, closed, found again, and cleaned up after a dead process.

Stage code asks for "the run of this model" (`Runs.start`) and gets a `Run` to log epochs,
datasets and the model into; the run ends FINISHED when the block succeeds, KILLED on Ctrl-C,
SIGTERM or SIGHUP, FAILED on any other error: that is the one place a run's status is set.
`NullRun` stands in for `--no-tracking`, so training code never asks whether it is tracked.

The calls a run makes go to the store on one background thread, in order (`_Queue`), while
training goes on; the first failure is raised in the training thread at its next call, and the
run waits for all of them before it ends. MLflow's import and store setup happen there too.

Every run carries tags that say what made it (`fashion_mlp.model`, `fashion_mlp.stage`) and
who runs it (host, boot, PID namespace, pid and the process's start time). Runs are found by
these tags, never by their name (`run_name` is for people), so a run whose process died
without closing it (SIGKILL, an OOM kill, a power cut) is found and closed as KILLED by the next
training of the same model and by `fashion-mlp cleanup-runs`. A trained model's run also
carries the SHA-256 of its checkpoint (`fashion_mlp.weights_sha256`): `evaluate` and
`register` find the run that made a checkpoint by it, so no run id is kept in any file.
"""

import contextlib
import hashlib
import json
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fashion_mlp.errors import PipelineError
from fashion_mlp.tracking.store import Store, drop_duplicates, translated, translated_call

MODEL_TAG, STAGE_TAG = "fashion_mlp.model", "fashion_mlp.stage"
WEIGHTS_TAG, MODEL_ID_TAG = "fashion_mlp.weights_sha256", "fashion_mlp.model_id"
HOST_TAG, BOOT_TAG, PID_NAMESPACE_TAG = (
    "fashion_mlp.host",
    "fashion_mlp.boot_id",
    "fashion_mlp.pid_ns",
)
PID_TAG, STARTED_TAG = "fashion_mlp.pid", "fashion_mlp.pid_started"
CLOSED_TAG, CLOSED_ORPHANS_TAG = "fashion_mlp.closed_by", "fashion_mlp.closed_orphans"
ATTEMPTS_TAG = "fashion_mlp.attempts"
# A fresh token per create, to find the copy a retried POST left (store.drop_duplicates).
CREATE_TOKEN_TAG = "fashion_mlp.create_token"
EVALUATED_TAG = "fashion_mlp.evaluated"
# On a LoggedModel: the SHA-256 of its files, as logged (registry.fetch checks it).
FILES_TAG = "fashion_mlp.files_sha256"
# Written by MLflow's downloader of a models:/ URI (the registered name and version it came by).
DOWNLOAD_NOTE = "registered_model_meta"
PARENT_TAG = "mlflow.parentRunId"
OPEN_STATUSES = ("RUNNING", "SCHEDULED")
# System metrics (CPU and memory) every second: a 10-second training gets a few.
SYSTEM_METRICS_SECONDS = 1.0


def run_name(model: str) -> str:
    """What a run is called in the MLflow UI: the model's name. Nothing finds runs by it."""
    return model


@dataclass(frozen=True)
class TensorShape:
    dtype: str  # numpy's name, e.g. "uint8"
    shape: tuple[int, ...]  # -1 for any size


@dataclass(frozen=True)
class DatasetRecord:
    """One data input of a run: what MLflow's Datasets panel shows."""

    name: str
    digest: str
    source: dict[str, str]
    features: TensorShape
    targets: TensorShape
    profile: dict[str, Any]
    context: str  # training | validation | testing


@dataclass(frozen=True)
class TrainedRun:
    """A finished training run and the model it logged."""

    run_id: str
    model_id: str
    epochs: int


def owner_tags() -> dict[str, str]:
    """Who runs this process: enough to tell later, from this machine, whether it still runs."""
    import psutil

    return {
        HOST_TAG: socket.gethostname(),
        BOOT_TAG: _boot_id(),
        PID_NAMESPACE_TAG: _pid_namespace(),
        PID_TAG: str(os.getpid()),
        STARTED_TAG: repr(psutil.Process().create_time()),
    }


def owner_is_gone(tags: Mapping[str, str]) -> bool:
    """True for a run started on this machine, since its last boot, in this PID namespace, by a
    process that no longer exists (a reused pid counts as gone: its start time differs). A run
    of another host, boot or namespace (a container: its pids are not ours) is never judged."""
    import psutil

    ours = owner_tags()
    if any(tags.get(key) != ours[key] for key in (HOST_TAG, BOOT_TAG, PID_NAMESPACE_TAG)):
        return False
    try:
        process = psutil.Process(int(tags[PID_TAG]))
        return repr(process.create_time()) != tags.get(STARTED_TAG)
    except (psutil.NoSuchProcess, KeyError, ValueError):
        return True


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "unknown"


class _Queue:
    """Calls run one at a time, in order, on one background thread. The first failure is
    raised in the caller at its next `submit` or at `wait`; calls after it are skipped."""

    def __init__(self, store: Store):
        self.store = store
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="mlflow")
        self._pending: list[Future] = []
        self._failure: BaseException | None = None

    def submit(self, function: Callable[..., Any], *args: Any) -> None:
        self._raise_failure()
        self._pending.append(self._pool.submit(self._guarded, function, *args))

    def _guarded(self, function: Callable[..., Any], *args: Any) -> None:
        if self._failure is not None:
            return
        try:
            translated_call(self.store, function, *args)
        except BaseException as err:
            self._failure = err

    def wait(self) -> None:
        for future in self._pending:
            future.result()
        self._pending.clear()
        self._raise_failure()

    def _raise_failure(self) -> None:
        self._pending = [future for future in self._pending if not future.done()]
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class Run:
    """A live run. Its calls return at once; they reach the store in the background, in order."""

    def __init__(self, store: Store, queue: _Queue):
        self.store = store
        self._queue = queue
        self.run_id = ""
        self._params: dict[str, Any] = {}
        self._monitor: Any = None
        # A resumed run keeps the steps it holds: metrics up to this step are not logged again.
        self._logged_through = 0

    def wait(self) -> str:
        """The run's id, once every call so far has reached the store."""
        self._queue.wait()
        return self.run_id

    def _create(
        self,
        name: str,
        tags: Mapping[str, str],
        params: Mapping[str, Any],
        parent: str | None,
        resume: Mapping[str, str] | None,
    ) -> None:
        from mlflow.tracking.context.registry import resolve_tags

        client = self.store.client
        # MLflow's own context tags (mlflow.user, the source), as its fluent API adds them.
        all_tags = resolve_tags(dict(tags) | ({PARENT_TAG: parent} if parent else {}))
        earlier = self._earlier_attempt(parent, resume) if resume is not None else None
        if earlier is not None:
            self.run_id = earlier.info.run_id
            attempts = int(earlier.data.tags.get(ATTEMPTS_TAG, "1")) + 1
            self._logged_through = max(
                (
                    m.step
                    for key in earlier.data.metrics
                    for m in client.get_metric_history(self.run_id, key)
                ),
                default=0,
            )
            client.update_run(self.run_id, status="RUNNING")
            self._set_tags(all_tags | {ATTEMPTS_TAG: str(attempts)})
            return
        if resume is not None:
            all_tags[ATTEMPTS_TAG] = "1"
        token = all_tags[CREATE_TOKEN_TAG] = uuid.uuid4().hex
        run = client.create_run(self.store.experiment_id, run_name=name, tags=all_tags)
        self.run_id = run.info.run_id
        copies = client.search_runs(
            [self.store.experiment_id], f"tags.`{CREATE_TOKEN_TAG}` = '{token}'"
        )
        drop_duplicates([copy.info.run_id for copy in copies], self.run_id, client.delete_run)
        self._params = dict(params)
        if params:
            from mlflow.entities import Param

            client.log_batch(
                self.run_id, params=[Param(key, str(value)) for key, value in params.items()]
            )

    def _earlier_attempt(self, parent: str | None, resume: Mapping[str, str]) -> Any:
        """The run of an earlier attempt at the same work (same parent and `resume` tags)."""
        query = " and ".join(
            f"tags.`{key}` = '{value}'"
            for key, value in ({PARENT_TAG: parent} if parent else {}).items() | resume.items()
        )
        found = self.store.client.search_runs([self.store.experiment_id], query, max_results=1)
        return found[0] if found else None

    def _start_system_metrics(self) -> None:
        from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self._monitor = SystemMetricsMonitor(
            self.run_id,
            sampling_interval=SYSTEM_METRICS_SECONDS,
            tracking_uri=self.store.target.uri,
        )
        # CPU and memory only (and the GPU's, where there is one): what runs are compared on
        # here, say 1 thread against 2. Disk and network add five rows to every run that push
        # test_acc out of view in MLflow 3.17's compare page (its metric names do not scroll).
        self._monitor.monitors = [
            monitor
            for monitor in self._monitor.monitors
            if isinstance(monitor, CPUMonitor) or "GPU" in type(monitor).__name__.upper()
        ]
        self._monitor.start()

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._queue.submit(self._log_metrics, dict(metrics), step)

    def _log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        if step and step <= self._logged_through:
            return  # an earlier attempt logged this step
        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, step) for key, value in metrics.items()]
        self.store.client.log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._queue.submit(self._set_tags, dict(tags))

    def _set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        batch = [RunTag(key, str(value)) for key, value in tags.items()]
        self.store.client.log_batch(self.run_id, tags=batch)

    def log_datasets(self, records: list[DatasetRecord]) -> None:
        """Data inputs, shown in the run's Datasets panel and the runs table's Dataset column."""
        self._queue.submit(self._log_datasets, records)

    def _log_datasets(self, records: list[DatasetRecord]) -> None:
        self.store.client.log_inputs(self.run_id, datasets=[_dataset_input(r) for r in records])

    def log_model(self, model: Any, example: Any, name: str, epochs: int, digest: str) -> None:
        """Log the model as a LoggedModel named `name`, in MLflow's safe `pt2` format (a
        torch.export graph: loading it runs no pickled code), with a signature and a real
        input example; tag the run and the model with the checkpoint's SHA-256."""
        self._queue.submit(self._log_model, model, example, name, epochs, digest)

    def _log_model(self, model: Any, example: Any, name: str, epochs: int, digest: str) -> None:
        import mlflow
        import torch
        from mlflow.entities import LoggedModelOutput
        from mlflow.models import infer_signature

        client = self.store.client
        with torch.inference_mode():
            output = model.eval()(torch.from_numpy(example)).numpy()
        # Created here, not by log_model: given the run, log_model would also link every metric
        # the run logged at that step (the last epoch's, and system metrics) to the model, beside
        # the evaluation's. The Models tab should show what evaluate measured, on its data.
        token = uuid.uuid4().hex
        logged = client.create_logged_model(
            self.store.experiment_id,
            name=name,
            source_run_id=self.run_id,
            params={key: str(value) for key, value in self._params.items()},
            tags={MODEL_TAG: name, WEIGHTS_TAG: digest, CREATE_TOKEN_TAG: token},
        )
        copies = client.search_logged_models(
            [self.store.experiment_id], f"tags.`{CREATE_TOKEN_TAG}` = '{token}'"
        )
        drop_duplicates(
            [copy.model_id for copy in copies], logged.model_id, client.delete_logged_model
        )
        mlflow.pytorch.log_model(
            model,
            name=name,
            model_id=logged.model_id,
            # Named, not left to MLflow: its default differs between versions and on Databricks.
            serialization_format="pt2",
            signature=infer_signature(example, output),
            input_example=example,
            # The network needs only torch. Naming it skips MLflow's requirement inference, a
            # subprocess that costs ~7 s per logged model; the example is checked by our tests,
            # not by loading the model once more.
            pip_requirements=mlflow.pytorch.get_default_pip_requirements(),
            validate_serving_input=False,
        )
        client.log_outputs(self.run_id, [LoggedModelOutput(logged.model_id, step=epochs)])
        self._set_tags({WEIGHTS_TAG: digest, MODEL_ID_TAG: logged.model_id})
        with tempfile.TemporaryDirectory(prefix="fashion-mlp-logged-") as scratch:
            folder = mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{logged.model_id}",
                dst_path=scratch,
                tracking_uri=self.store.target.uri,
            )
            files = {FILES_TAG: files_digest(Path(folder))}
            client.set_logged_model_tags(logged.model_id, files)

    def _end(self, status: str) -> None:
        from mlflow.entities import LoggedModelStatus

        if self._monitor is not None:
            self._monitor.finish()
        if not self.run_id:
            return  # never created: the store failed before, and said so
        client = self.store.client
        if status != "FINISHED":
            # A model logged before the failure is not one to use.
            for logged in _models_of(client, self.store.experiment_id, self.run_id):
                if logged.status == LoggedModelStatus.PENDING:
                    client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        client.set_terminated(self.run_id, status)


class NullRun:
    """The run of `--no-tracking`: every call does nothing."""

    run_id = ""

    def wait(self) -> str:
        return ""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def log_datasets(self, records: list[DatasetRecord]) -> None:
        pass

    def log_model(self, model: Any, example: Any, name: str, epochs: int, digest: str) -> None:
        pass


class NullRuns:
    """What `--no-tracking` trains with: runs that record nothing."""

    @contextmanager
    def start(self, model: str, stage: str, *args: Any, **kwargs: Any) -> Iterator[NullRun]:
        yield NullRun()


class Runs:
    """The runs of one experiment."""

    def __init__(self, store: Store):
        self.store = store

    @contextmanager
    def start(
        self,
        model: str,
        stage: str,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
        parent: str | None = None,
        owner: Mapping[str, str] | None = None,
        system_metrics: bool = False,
        close_orphans: bool = True,
        resume: Mapping[str, str] | None = None,
        ends: bool = True,
    ) -> Iterator[Run]:
        """A new run of `model` made by `stage`, filled by the block and ended FINISHED, FAILED
        or KILLED. Runs of the same model and stage left open by a dead process are closed
        first (`close_orphans`). `owner` is who answers for the run (default: this process).
        With `resume`, an earlier attempt's run with these tags (and the same parent) is
        reopened instead; its attempts are counted in the tag fashion_mlp.attempts. With
        `ends` False the block's calls are waited for but the run is left open: its owner
        (`owner`) ends it, as a sweep ends the runs of its trials (`end_children`)."""
        queue = _Queue(self.store)
        run = Run(self.store, queue)
        identity = {MODEL_TAG: model, STAGE_TAG: stage} | dict(owner or owner_tags())
        queue.submit(
            self._open,
            run,
            model,
            stage,
            dict(tags) | identity,
            params,
            parent,
            close_orphans,
            resume,
        )
        if system_metrics:
            queue.submit(run._start_system_metrics)
        status = "FAILED"
        try:
            yield run
            queue.wait()
            status = "FINISHED"
        except (KeyboardInterrupt, SystemExit) as stop:
            # MLflow alone would call an interrupted run FAILED. A trial that Ray Tune's
            # scheduler stops leaves through SystemExit(0): it finished, early.
            status = "FINISHED" if isinstance(stop, SystemExit) and not stop.code else "KILLED"
            raise
        finally:
            self._finish(queue, run, status if ends else None)

    def _open(
        self,
        run: Run,
        model: str,
        stage: str,
        tags: dict[str, str],
        params: Mapping[str, Any],
        parent: str | None,
        close_orphans: bool,
        resume: Mapping[str, str] | None,
    ) -> None:
        closed = self._close_orphans(model, stage) if close_orphans else []
        if closed:
            tags[CLOSED_ORPHANS_TAG] = ",".join(closed)
        run._create(run_name(model), tags, params, parent, resume)

    def _finish(self, queue: _Queue, run: Run, status: str | None) -> None:
        """End the run (unless `status` is None) once the calls on their way reached the store."""
        try:
            # Only a block that failed can meet an error here (on success it waited itself): its
            # own error is on its way up and wins over this one.
            with contextlib.suppress(BaseException):
                queue.wait()
            if status is not None:
                translated_call(self.store, run._end, status)
        except PipelineError:
            if status == "FINISHED":
                raise
        finally:
            queue.close()

    @translated
    def close_orphans(self, model: str | None = None, stage: str | None = None) -> list[str]:
        """Mark KILLED every open run of the experiment (of `model` and `stage`, if given) whose
        process on this machine is gone, and fail the models it left PENDING; their ids."""
        return self._close_orphans(model, stage)

    def _close_orphans(self, model: str | None, stage: str | None) -> list[str]:
        from mlflow.entities import LoggedModelStatus

        if self.store.created_experiment:
            return []  # a store that had no experiment holds no runs to close
        client = self.store.client
        query = " and ".join(
            f"tags.`{key}` = '{value}'"
            for key, value in ((MODEL_TAG, model), (STAGE_TAG, stage))
            if value is not None
        )
        closed = []
        for found in self._open_runs(query):
            if not owner_is_gone(found.data.tags):
                continue
            run_id = found.info.run_id
            client.set_tag(run_id, CLOSED_TAG, "its process was gone (found by fashion-mlp)")
            client.set_terminated(run_id, "KILLED")
            for logged in _models_of(client, self.store.experiment_id, run_id):
                if logged.status == LoggedModelStatus.PENDING:
                    client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
            closed.append(run_id)
        return closed

    @translated
    def end_children(self, parent: str, ends: Mapping[str, tuple[str, Mapping[str, str]]]) -> None:
        """End the children of `parent`: each run in `ends` with its (status, tags), every other
        one still open KILLED (its work never ended)."""
        client = self.store.client
        for run_id, (status, tags) in ends.items():
            for key, value in tags.items():
                client.set_tag(run_id, key, value)
            client.set_terminated(run_id, status)
        for found in self._open_runs(f"tags.`{PARENT_TAG}` = '{parent}'"):
            client.set_terminated(found.info.run_id, "KILLED")

    def _open_runs(self, query: str) -> list[Any]:
        """Runs matching `query` that are still RUNNING or SCHEDULED (MLflow's search takes
        one status at a time)."""
        return [
            found
            for status in OPEN_STATUSES
            for found in self.store.client.search_runs(
                [self.store.experiment_id],
                " and ".join([f"attributes.status = '{status}'", *([query] if query else [])]),
                max_results=10_000,
            )
        ]

    @translated
    def trained(self, model: str, digest: str, evaluated: bool = False) -> TrainedRun:
        """The newest finished run that trained `model` into the checkpoint with SHA-256
        `digest` (and, with `evaluated`, holds its evaluation)."""
        client = self.store.client
        query = (
            f"attributes.status = 'FINISHED' and tags.`{MODEL_TAG}` = '{model}' "
            f"and tags.`{STAGE_TAG}` = 'train' and tags.`{WEIGHTS_TAG}` = '{digest}'"
        )
        found = client.search_runs(
            [self.store.experiment_id], query, order_by=["attributes.start_time DESC"]
        )
        if evaluated:
            found = [run for run in found if run.data.tags.get(EVALUATED_TAG)]
        if not found:
            from mlflow.entities import ViewType

            deleted = client.search_runs(
                [self.store.experiment_id], query, ViewType.DELETED_ONLY, max_results=1
            )
            if deleted:
                raise PipelineError(
                    f"the run that trained {model!r} into these weights ({deleted[0].info.run_id}"
                    f") is deleted in {self.store.target.shown_uri}; restore it with `mlflow "
                    f"runs restore --run-id {deleted[0].info.run_id}`, or retrain: "
                    f"`dvc repro --force train@{model}`"
                )
            what = "evaluated run" if evaluated else "finished run"
            raise PipelineError(
                f"no {what} of {model!r} with these weights (sha256 {digest[:12]}...) in "
                f"experiment {self.store.target.experiment!r} of {self.store.target.shown_uri}; "
                f"train it into this store: `dvc repro --force train@{model}`"
            )
        run = found[0]
        return TrainedRun(
            run_id=run.info.run_id,
            model_id=run.data.tags.get(MODEL_ID_TAG, ""),
            epochs=int(run.data.params.get("epochs", "0")),
        )

    @translated
    def log_evaluation(
        self,
        trained: TrainedRun,
        metrics: Mapping[str, float],
        dataset: DatasetRecord,
        files: list[Path],
        folder: str,
    ) -> None:
        """Add the evaluation to the training run without reopening it (its start and end stay
        those of the training), its metrics linked to the run's LoggedModel and to the data
        they were computed on, so the Models tab lists them."""
        from mlflow.entities import Metric

        client = self.store.client
        now = int(time.time() * 1000)
        batch = [
            Metric(
                key,
                float(value),
                now,
                trained.epochs,
                model_id=trained.model_id or None,
                dataset_name=dataset.name,
                dataset_digest=dataset.digest,
            )
            for key, value in metrics.items()
        ]
        client.log_inputs(trained.run_id, datasets=[_dataset_input(dataset)])
        client.log_batch(trained.run_id, metrics=batch)
        for path in files:
            client.log_artifact(trained.run_id, str(path), artifact_path=folder)
        client.set_tag(trained.run_id, EVALUATED_TAG, "true")


def logged_files(folder: Path) -> list[Path]:
    """A downloaded model's files, without the note MLflow's downloader adds beside them."""
    return sorted(
        path for path in Path(folder).rglob("*") if path.is_file() and path.name != DOWNLOAD_NOTE
    )


def files_digest(folder: Path) -> str:
    """SHA-256 over every file of a downloaded model folder (relative path and content)."""
    digest = hashlib.sha256()
    for path in logged_files(folder):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _models_of(client: Any, experiment_id: str, run_id: str) -> list[Any]:
    return client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'")


def _dataset_input(record: DatasetRecord) -> Any:
    import numpy as np
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.types import Schema, TensorSpec

    def schema(spec: TensorShape) -> str:
        return Schema([TensorSpec(np.dtype(spec.dtype), spec.shape)]).to_json()

    return DatasetInput(
        Dataset(
            name=record.name,
            digest=record.digest,
            source_type="dvc",
            source=json.dumps(record.source),
            schema=json.dumps(
                {
                    "mlflow_tensorspec": {
                        "features": schema(record.features),
                        "targets": schema(record.targets),
                    }
                }
            ),
            profile=json.dumps(record.profile),
        ),
        tags=[InputTag(key="mlflow.data.context", value=record.context)],
    )
