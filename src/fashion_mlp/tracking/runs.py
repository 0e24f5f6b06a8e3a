"""Runs: how a run is opened, filled and closed. The other jobs of the tracking layer live beside
it, and `Runs` is the one door stage code goes through:

    calls.py        the background queue a run's calls go through, in order
    orphans.py      who runs a run, and closing runs whose process died
    models.py       logging a model and hashing its files
    datasets.py     the data inputs of a run
    evaluations.py  an evaluation added to the training run
    provenance.py   which run trained a checkpoint

Stage code asks for "the run of this model" (`Runs.start`) and gets a `Run` to log epochs,
datasets and the model into; the run ends FINISHED when the block succeeds, KILLED on Ctrl-C,
SIGTERM or SIGHUP, FAILED on any other error: that is the one place a run's status is set.
`NullRun` stands in for `--no-tracking`, so training code never asks whether it is tracked.

The calls a run makes go to the store on one background thread, in order (calls.py), while
training goes on; the first failure is raised in the training thread at its next call, and the
run waits for all of them before it ends. MLflow's import and store setup happen there too.
Every run carries tags that say what made it (`fashion_mlp.model`, `fashion_mlp.stage`) and who
runs it (orphans.py); runs are found by these tags, never by their name.
"""

import contextlib
import hashlib
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fashion_mlp.errors import PipelineError
from fashion_mlp.tracking.calls import CallQueue
from fashion_mlp.tracking.datasets import DatasetRecord, dataset_input
from fashion_mlp.tracking.evaluations import log_evaluation
from fashion_mlp.tracking.models import log_model
from fashion_mlp.tracking.orphans import (
    close_orphaned_runs,
    fail_pending_models,
    open_runs,
    owner_tags,
)
from fashion_mlp.tracking.provenance import TrainedRun, trained
from fashion_mlp.tracking.store import Store, StoreFailure, translated, translated_call
from fashion_mlp.tracking.tags import (
    ATTEMPTS_TAG,
    CLOSED_ORPHANS_TAG,
    CREATE_TOKEN_TAG,
    MODEL_ID_TAG,
    MODEL_TAG,
    PARENT_TAG,
    STAGE_TAG,
    WEIGHTS_TAG,
    run_name,
)

# System metrics (CPU and memory) every second: a 10-second training gets a few.
SYSTEM_METRICS_SECONDS = 1.0


class Run:
    """A live run. Its calls return at once; they reach the store in the background, in order."""

    def __init__(self, store: Store, queue: CallQueue):
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
        experiment = self.store.experiment_id
        self.run_id = self.store.create_once(
            lambda token: (
                client.create_run(
                    experiment, run_name=name, tags=all_tags | {CREATE_TOKEN_TAG: token}
                ).info.run_id
            ),
            lambda token: [
                copy.info.run_id
                for copy in client.search_runs(
                    [experiment], f"tags.`{CREATE_TOKEN_TAG}` = '{token}'"
                )
            ],
            # A copy is ended before it is deleted: a deleted run left RUNNING would be one.
            lambda copy: (client.set_terminated(copy, "KILLED"), client.delete_run(copy)),
        )
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
        self.store.client.log_inputs(self.run_id, datasets=[dataset_input(r) for r in records])

    def log_model(self, model: Any, example: Any, name: str, epochs: int, checkpoint: bytes):
        """Log the model as a LoggedModel named `name`, with its checkpoint file's bytes
        (models.py), the output of the run's last step (`epochs`); tag the run with the
        checkpoint's SHA-256 and the model's id."""
        self._queue.submit(self._log_model, model, example, name, epochs, checkpoint)

    def _log_model(self, model: Any, example: Any, name: str, epochs: int, checkpoint: bytes):
        from mlflow.entities import LoggedModelOutput

        model_id = log_model(
            self.store, self.run_id, self._params, model, example, name, checkpoint
        )
        self.store.client.log_outputs(self.run_id, [LoggedModelOutput(model_id, step=epochs)])
        digest = hashlib.sha256(checkpoint).hexdigest()
        self._set_tags({WEIGHTS_TAG: digest, MODEL_ID_TAG: model_id})

    def _end(self, status: str) -> None:
        if self._monitor is not None:
            self._monitor.finish()
        if not self.run_id:
            return  # never created: the store failed before, and said so
        if status != "FINISHED":
            fail_pending_models(self.store, self.run_id)
        self.store.client.set_terminated(self.run_id, status)


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

    def log_model(self, model: Any, example: Any, name: str, epochs: int, checkpoint: bytes):
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
        queue = CallQueue(self.store)
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
        except StoreFailure:
            # No more calls to a store that failed: the run stays as the store last saw it,
            # for `fashion-mlp cleanup-runs`.
            ends = False
            raise
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
        closed = close_orphaned_runs(self.store, model, stage) if close_orphans else []
        if closed:
            tags[CLOSED_ORPHANS_TAG] = ",".join(closed)
        run._create(run_name(model), tags, params, parent, resume)

    def _finish(self, queue: CallQueue, run: Run, status: str | None) -> None:
        """End the run (unless `status` is None, or its store failed) once the calls on their
        way reached the store."""
        try:
            # Only a block that failed can meet an error here (on success it waited itself): its
            # own error is on its way up and wins over this one.
            with contextlib.suppress(BaseException):
                queue.wait()
            if status is not None and not queue.failed:
                translated_call(self.store, run._end, status)
        except PipelineError:
            if status == "FINISHED":
                raise
        finally:
            queue.close()

    @translated
    def close_orphans(self, model: str | None = None, stage: str | None = None) -> list[str]:
        """Close the runs (of `model` and `stage`, if given) whose process is gone (orphans.py);
        their ids."""
        return close_orphaned_runs(self.store, model, stage)

    @translated
    def end_children(self, parent: str, ends: Mapping[str, tuple[str, Mapping[str, str]]]) -> None:
        """End the children of `parent`: each run in `ends` with its (status, tags), every other
        one still open KILLED (its work never ended)."""
        client = self.store.client
        for run_id, (status, tags) in ends.items():
            for key, value in tags.items():
                client.set_tag(run_id, key, value)
            client.set_terminated(run_id, status)
        for found in open_runs(self.store, f"tags.`{PARENT_TAG}` = '{parent}'"):
            client.set_terminated(found.info.run_id, "KILLED")

    @translated
    def trained(
        self, model: str, digest: str, evaluated: bool = False, graph: bool = False
    ) -> TrainedRun:
        """The run that trained `model` into the checkpoint with SHA-256 `digest`, confirmed
        by the bytes it logged (provenance.py)."""
        return trained(self.store, model, digest, evaluated, graph)

    @translated
    def log_evaluation(
        self,
        trained: TrainedRun,
        metrics: Mapping[str, float],
        dataset: DatasetRecord,
        files: list[Path],
        folder: str,
    ) -> None:
        """Add an evaluation to the training run `trained` (evaluations.py)."""
        log_evaluation(self.store, trained, metrics, dataset, files, folder)
