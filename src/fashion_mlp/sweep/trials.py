"""Running the trials on Ray Tune: the trial function, and what each trial's outcome was.

Each trial runs in a Ray worker: it opens its own MLflow run (a child of the sweep's run, with
the driver's owner tags, so a dead driver's trials are found and closed like any orphan), trains
on the training images minus the validation split, and reports validation metrics after every
epoch to Tune and to its run. It never receives the test split. How a trial ended travels back
through Tune's results (`TrialOutcome`): its epochs, whether the scheduler stopped it, and the
error of a trial that diverged. A trial retried after its worker or node died reopens its run
and restarts at epoch 1 (no checkpoints); with the same seed it retraces the same weights, and
the epochs its run already holds are not logged twice. A trial whose tracking store fails stops
the whole sweep with the store's one-line error: every other trial would fail the same way.

Ray: an embedded local Ray by default (no dashboard, this machine's CPUs); with `RAY_ADDRESS`
set, the same command joins that cluster. The training data and the trials' configurations go
into Ray's object store once; Tune's own search space holds only the trials' indices (it copies
the whole space for every trial it creates: with the configurations in it, 2,000 trials took
90 s before the first one started).
"""

import logging
import math
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

from fashion_mlp.epoch_metrics import (
    EPOCH,
    EPOCH_SECONDS,
    EpochMetrics,
    epoch_keys,
    held_out_acc,
)
from fashion_mlp.errors import PipelineError
from fashion_mlp.params import Params
from fashion_mlp.splits import Split
from fashion_mlp.sweep.space import TrialPlan, sweep_params
from fashion_mlp.tracking.store import StoreFailure, TrackingTarget

TRIAL_STAGE = "sweep-trial"
TRIAL_TAG, NODE_TAG, ERROR_TAG = "sweep_trial", "ray_node_id", "sweep_trial_error"
WORKER_TAG, STOPPED_TAG = "ray_worker_pid", "early_stopped_at_epoch"
# The result key of a trial that met a problem every trial would meet (its tracking store
# failed): the driver stops the sweep with it.
STOP_KEY = "sweep_stop_error"
VALIDATION = "val"  # the held-out split's name: trials report val_acc, never a test score
VAL_ACC = held_out_acc(VALIDATION)
TRIAL_METRICS = (*epoch_keys(VALIDATION), EPOCH_SECONDS)
# Tune's default reporter prints where its files are (a temporary folder here) even at
# verbose=0; its older reporter prints nothing at verbose=0: our progress bar reports. A trial
# that diverges ends with a result that carries no validation metric, which strict checking
# would turn into an error of the whole sweep; ASHA itself ignores such a result. Ctrl-C is
# ours: Tune's own handler only asks its loop to stop (measured: the trials ran on to the end),
# while a KeyboardInterrupt stops the sweep at once, every unfinished trial's run KILLED.
TUNE_ENVIRONMENT = {
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
    "TUNE_DISABLE_SIGINT_HANDLER": "1",
}


@dataclass
class TrialOutcome:
    plan: TrialPlan
    status: str = "KILLED"  # FINISHED | FAILED | KILLED (never finished: an interrupted sweep)
    epochs: list[EpochMetrics] = field(default_factory=list)
    error: str = ""
    run_id: str = ""  # its MLflow run, as the trial reported it

    def run_end(self) -> tuple[str, dict[str, str]]:
        """The status and tags its run ends with."""
        tags = {STOPPED_TAG: str(len(self.epochs))} if self.stopped_early else {}
        return self.status, tags | ({ERROR_TAG: self.error[:5000]} if self.error else {})

    @property
    def stopped_early(self) -> bool:
        return self.status == "FINISHED" and len(self.epochs) < self.plan.config.train.epochs

    @property
    def val_acc(self) -> float:
        return self.epochs[-1][VAL_ACC] if self.epochs else float("nan")


class _TrackingFailed(Exception):
    """The tracking store failed while the trial trained (not a PipelineError, so that it is
    not mistaken for the training's own, a divergence)."""


def run_trial(
    config: dict[str, Any],
    trials: Mapping[int, dict[str, Any]],
    settings: Mapping[str, Any],
    data: dict[str, Any],
) -> None:
    """One trial, `trials[config["trial"]]`, in a Ray worker (see the module docstring)."""
    import numpy as np
    import ray
    import torch
    from ray import tune

    from fashion_mlp.linalg import pin_numerics
    from fashion_mlp.params import ModelSpec, TrainParams
    from fashion_mlp.threads import CoreShare
    from fashion_mlp.tracking.runs import Runs
    from fashion_mlp.tracking.store import Store
    from fashion_mlp.train import fit, seeded_model

    trial = trials[config["trial"]]
    spec, params = ModelSpec(**trial["model"]), TrainParams(**trial["train"])
    pin_numerics(params.numerics)
    store = Store(TrackingTarget(**settings["target"]), create_experiment=False)
    tags = {
        TRIAL_TAG: str(trial["index"]),
        NODE_TAG: ray.get_runtime_context().get_node_id(),
        WORKER_TAG: str(os.getpid()),
    }

    def split(name: str) -> Split:
        images, labels = data[name]
        return Split(torch.from_numpy(np.array(images)), torch.from_numpy(np.array(labels)))

    # The driver ends the run from the trial's outcome (Ray may stop or kill this worker at any
    # report, without unwinding it): here it is opened, filled, and left to the driver, who also
    # answers for it (its owner tags), so a dead driver's trials are closed like its own run.
    try:
        with Runs(store).start(
            trial["name"],
            TRIAL_STAGE,
            trial["params"],
            tags,
            parent=settings["parent"],
            owner=settings["owner"],
            close_orphans=False,
            resume={TRIAL_TAG: str(trial["index"])},
            ends=False,
        ) as run:
            run_id = run.wait()

            def on_epoch_end(metrics: EpochMetrics) -> None:
                try:
                    run.log_metrics({key: metrics[key] for key in TRIAL_METRICS}, metrics[EPOCH])
                except PipelineError as err:
                    raise _TrackingFailed(str(err)) from None
                # Tune may stop the trial here (ASHA): it leaves through SystemExit(0).
                tune.report(
                    {key: metrics[key] for key in (*TRIAL_METRICS, EPOCH)} | {"run_id": run_id}
                )

            with CoreShare(fixed_threads=settings["cpus_per_trial"]) as cores:
                model, generator = seeded_model(spec, params)
                try:
                    fit(
                        model,
                        split("train"),
                        split("validation"),
                        params,
                        generator,
                        on_epoch_end=on_epoch_end,
                        on_batch_end=cores.rebalance,
                        held_out_name=VALIDATION,
                    )
                except PipelineError as err:
                    # A configuration that diverges is a result, not a crash: no retry.
                    tune.report({"error": str(err)[:500], "run_id": run_id})
    except (PipelineError, _TrackingFailed) as err:
        # Only the store raises these here (opening the run, or its calls): reported, they stop
        # the sweep; raised, each trial would crash, be retried twice, and Tune would log a
        # traceback for every attempt.
        tune.report({STOP_KEY: " ".join(str(err).split())[:500]})


def tracker(outcomes: list[TrialOutcome], show_progress: bool) -> Any:
    """A Tune callback that turns Tune's view of every trial into its TrialOutcome, with a
    progress bar; and the sweep's stopper: once a trial reports an error that every trial would
    meet (`stop_error`), every trial stops (ending KILLED). Built here so that importing this
    module does not import Ray."""
    from ray.tune import Callback, Stopper
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    by_index = {outcome.plan.index: outcome for outcome in outcomes}

    class Tracker(Callback, Stopper):
        def __init__(self) -> None:
            self.ended: set[int] = set()
            self.stop_error = ""
            self.progress = Progress(
                TextColumn("[bold]trials"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[best]}"),
                disable=not show_progress,
            )
            self.task = self.progress.add_task("trials", total=len(outcomes), best="")

        def __getstate__(self) -> dict:
            # Tune pickles its callbacks with the experiment state (for resuming, which we do
            # not use); a live progress bar does not pickle.
            return {}

        def on_trial_result(self, iteration, trials, trial, result, **info):
            outcome = by_index[trial.config["trial"]]
            outcome.run_id = result.get("run_id", outcome.run_id)
            if STOP_KEY in result:
                self.stop_error = (
                    self.stop_error or f"{result[STOP_KEY]} (trial {outcome.plan.index})"
                )
            outcome.error = result.get("error") or result.get(STOP_KEY) or outcome.error
            if VAL_ACC not in result:
                return
            epoch = {key: result[key] for key in (*TRIAL_METRICS, EPOCH)}
            # A retried trial reports its epochs again from 1: keep one row per epoch.
            outcome.epochs = [row for row in outcome.epochs if row[EPOCH] < epoch[EPOCH]]
            outcome.epochs.append(epoch)

        def on_trial_complete(self, iteration, trials, trial, **info):
            outcome = by_index[trial.config["trial"]]
            outcome.status = "FAILED" if outcome.error else "FINISHED"
            self._ended(outcome)

        def on_trial_error(self, iteration, trials, trial, **info):
            outcome = by_index[trial.config["trial"]]
            outcome.status = "FAILED"
            error = trial.get_error()
            outcome.error = " ".join(str(error or "the trial crashed").split())[:500]
            self._ended(outcome)

        def _ended(self, outcome: TrialOutcome) -> None:
            self.ended.add(outcome.plan.index)
            done = [o.val_acc for o in by_index.values() if o.status == "FINISHED" and o.epochs]
            best = f"best val_acc {max(done):.4f}" if done else ""
            self.progress.update(self.task, completed=len(self.ended), best=best)

        def __call__(self, trial_id: str, result: dict) -> bool:
            return STOP_KEY in result

        def stop_all(self) -> bool:
            return bool(self.stop_error)

        @property
        def interrupted(self) -> bool:
            return len(self.ended) < len(by_index)

    return Tracker()


def start_ray(params: Params, ray_address: str | None) -> bool:
    """Join `ray_address` or start an embedded Ray; True if we started it (and must stop it).
    Refuses a trial that no node can hold (Tune would wait for it forever): before starting an
    embedded Ray, by this machine's cores; on a cluster, by its largest live node."""
    import ray

    from fashion_mlp.numerics import effective_numerics_env
    from fashion_mlp.threads import available_cores

    # Trials compute with the driver's numerics, ours or the ones its caller set.
    runtime_env: dict[str, Any] = {"env_vars": effective_numerics_env()}
    if ray_address:
        # Our code reaches nodes that lack it (they need torch, mlflow and ray installed).
        runtime_env["py_modules"] = [str(Path(__file__).parents[1])]
    started = not ray.is_initialized()
    if started and not ray_address:
        _refuse_unschedulable(params, available_cores(), "this machine has")
    if started:
        # "local" starts a private Ray even where another one runs on this machine.
        options: dict[str, Any] = (
            {"address": ray_address}
            if ray_address
            else {
                "address": "local",
                "num_cpus": available_cores(),
                "include_dashboard": False,
                "object_store_memory": 256 * 1024 * 1024,
            }
        )
        # Ray's driver takes SIGTERM over: its handler stops Ray's processes and exits 15, and
        # its C++ core prints a stack dump. The handler it replaces (the CLI's) unwinds like
        # Ctrl-C: the runs end KILLED, and ray.shutdown stops Ray's processes.
        on_sigterm = signal.getsignal(signal.SIGTERM)
        # Ray says at every start that it enabled token authentication by default: a note for
        # its log, not a line beside the sweep's own.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
            logging.ERROR
        )
        ray.init(runtime_env=runtime_env, log_to_driver=False, logging_level="WARNING", **options)
        if on_sigterm is not None:
            signal.signal(signal.SIGTERM, on_sigterm)
    largest = max(
        (node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")), default=0
    )
    try:
        _refuse_unschedulable(params, largest, "the largest live Ray node has")
    except PipelineError:
        if started:
            ray.shutdown()
        raise
    return started


def _refuse_unschedulable(params: Params, cpus: float, where: str) -> None:
    wanted = sweep_params(params).cpus_per_trial
    if wanted > cpus:
        raise PipelineError(
            f"{params.source}: sweep.cpus_per_trial = {wanted}: {where} {cpus:g} "
            f"{'CPU' if cpus == 1 else 'CPUs'}, so no trial could ever start; lower it"
        )


def tune_trials(
    params: Params,
    outcomes: list[TrialOutcome],
    rest: Split,
    validation: Split,
    trial_settings: Mapping[str, Any],
    show_progress: bool,
) -> bool:
    """Run every trial on Ray Tune, filling in the outcomes; True if the sweep was interrupted.
    A trial's error that stops the sweep (its tracking store failed) is raised, naming the
    trial. Credentials travel to the workers through their environment (inherited from this
    process for embedded Ray; the cluster's own for `RAY_ADDRESS`), never in a config."""
    import tempfile

    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    sweep = sweep_params(params)
    callback = tracker(outcomes, show_progress)
    callback.progress.start()
    try:
        data = {
            "train": (rest.images.numpy(), rest.labels.numpy()),
            "validation": (validation.images.numpy(), validation.labels.numpy()),
        }
        trials = {
            outcome.plan.index: {
                "index": outcome.plan.index,
                "name": outcome.plan.config.name,
                "model": outcome.plan.config.model.model_dump(),
                "train": outcome.plan.config.train.model_dump() | {"device": "cpu"},
                "params": outcome.plan.config.flat() | {"trial": outcome.plan.index},
            }
            for outcome in outcomes
        }
        trainable = tune.with_resources(
            tune.with_parameters(
                run_trial, trials=trials, settings=dict(trial_settings), data=data
            ),
            {"cpu": sweep.cpus_per_trial},
        )
        epochs = max(outcome.plan.config.train.epochs for outcome in outcomes)
        with (
            tempfile.TemporaryDirectory(prefix="fashion-mlp-tune-") as storage,
            mock.patch.dict(os.environ, TUNE_ENVIRONMENT),
        ):
            tuner = tune.Tuner(
                trainable,
                param_space={"trial": tune.grid_search(list(trials))},
                tune_config=tune.TuneConfig(
                    scheduler=ASHAScheduler(
                        metric=VAL_ACC,
                        mode="max",
                        time_attr="training_iteration",
                        max_t=epochs,
                        grace_period=min(sweep.scheduler.grace_period, epochs),
                        reduction_factor=sweep.scheduler.reduction_factor,
                    ),
                    max_concurrent_trials=sweep.max_concurrent_trials,
                    reuse_actors=True,
                ),
                run_config=tune.RunConfig(
                    name=sweep.name,
                    storage_path=storage,
                    verbose=0,
                    callbacks=[callback],
                    stop=callback,
                    failure_config=tune.FailureConfig(max_failures=2),
                    checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False),
                ),
            )
            tuner.fit()
    finally:
        callback.progress.stop()
    if callback.stop_error:
        # Only the store stops a sweep this way (a trial's run could not be written).
        raise StoreFailure(callback.stop_error)
    return callback.interrupted


def rank(outcome: TrialOutcome) -> tuple:
    """Completed trials first (by final validation accuracy), then stopped ones, then failed."""
    order = {"FINISHED": 0, "FAILED": 2, "KILLED": 3}[outcome.status]
    if outcome.stopped_early:
        order = 1
    accuracy = outcome.val_acc if not math.isnan(outcome.val_acc) else -1.0
    return (order, -accuracy, outcome.plan.index)
