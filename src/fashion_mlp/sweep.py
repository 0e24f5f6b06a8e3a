"""Stage `sweep` (sweeps/dvc.yaml; `make sweep`): a hyperparameter search on Ray Tune.

Reads `data/processed/train.pt` and params `sweep`, `train` and `mlflow`; never the test split
while searching. A seeded validation split (`sweep.validation_size` images) is carved from the
60,000 training images; each trial trains on the rest and reports validation accuracy after
every epoch. Ray Tune's ASHA scheduler stops the weak trials early, seeing validation metrics
only, and the ranking uses them only. The best configuration is then retrained (same seed, same
split: the same weights) and tested once; that number is reported beside it, never used.

Writes to `reports/sweep/`: `sweep.md` (trials ranked, with their configurations),
`trials.csv` (every trial), `curves.png` (every trial's validation curve, an x where the
scheduler stopped it) and `best.yaml` (the winner as a ready-to-paste `models` entry).
MLflow gets one parent run named after the sweep and one child run per trial.

    fashion-mlp sweep --params params.yaml --data-dir data/processed --out-dir reports/sweep

Ray: an embedded local Ray by default (no dashboard, this machine's CPUs); with `RAY_ADDRESS`
set, the same command joins that cluster. The training data goes into Ray's object store once:
workers on other machines need no copy of `data/` and no shared file system. Trials keep no
checkpoints, so a trial retried after its node died restarts at epoch 1; with the same seed it
retraces the same weights, and the epochs its run already holds are not logged twice.
"""

import contextlib
import itertools
import json
import math
import random
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fashion_mlp.artifacts import EpochMetrics
from fashion_mlp.atomic import atomic_path, write_text_atomic
from fashion_mlp.errors import PipelineError
from fashion_mlp.params import Params, RunConfig
from fashion_mlp.tracking import SQLITE_PREFIX, TrackingTarget, connect, store_error

SPACE_KINDS = ("choice", "grid", "uniform", "loguniform", "randint")
# A `space` key whose values are whole mappings of keys to set together (an ablation row, say).
VARIANT = "variant"
PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG, NODE_TAG, ERROR_TAG = "sweep_trial", "ray_node_id", "sweep_trial_error"
STOPPED_TAG = "early_stopped_at_epoch"
TRIAL_METRICS = ("train_loss", "train_acc", "val_acc", "epoch_seconds")


@dataclass(frozen=True)
class TrialPlan:
    """One trial: what was drawn for it and the full, validated configuration it trains."""

    index: int
    sampled: dict[str, Any]
    entry: dict[str, Any]  # a `models` entry: base, then the drawn values
    config: RunConfig


@dataclass
class TrialOutcome:
    plan: TrialPlan
    run_id: str
    status: str = "KILLED"  # FINISHED | FAILED | KILLED (never finished: an interrupted sweep)
    epochs: list[EpochMetrics] = field(default_factory=list)
    stopped_early: bool = False
    node: str = ""
    error: str = ""

    @property
    def val_acc(self) -> float:
        return self.epochs[-1]["val_acc"] if self.epochs else float("nan")


def plan_trials(params: Params) -> list[TrialPlan]:
    """Every trial's configuration, drawn from `sweep.space` with `sweep.seed`: the same seed
    gives the same trials, in the same order, on every machine. `grid` keys are crossed with
    each other and each grid point gets `sweep.trials` random draws of the other keys."""
    sweep = params.sweep
    draw = random.Random(sweep.seed)
    grid_keys = [key for key, spec in sweep.space.items() if _kind(key, spec, params) == "grid"]
    grid = list(itertools.product(*(sweep.space[key]["grid"] for key in grid_keys)))
    plans = []
    for _ in range(sweep.trials):
        for point in grid:
            sampled = dict(zip(grid_keys, point, strict=True))
            for key, spec in sweep.space.items():
                if key not in sampled:
                    sampled[key] = _draw(draw, _kind(key, spec, params), spec)
            variant = sampled.get(VARIANT, {})
            if not isinstance(variant, dict):
                raise PipelineError(
                    f"{params.source}: sweep.space.{VARIANT}: values must be mappings of keys "
                    f"to set together, got {variant!r}"
                )
            chosen = {key: value for key, value in sampled.items() if key != VARIANT}
            # A variant sets its keys together, over anything drawn for them.
            entry = dict(sweep.base) | chosen | variant
            index = len(plans)
            where = f"sweep (trial {index}: {json.dumps(sampled)})"
            config = params.entry_config(f"{sweep.name}-{index}", entry, where)
            plans.append(TrialPlan(index, sampled, entry, config))
    return plans


def _kind(key: str, spec: Mapping[str, Any], params: Params) -> str:
    if len(spec) != 1 or next(iter(spec)) not in SPACE_KINDS:
        raise PipelineError(
            f"{params.source}: sweep.space.{key} = {dict(spec)!r}: expected one of "
            f"{', '.join(SPACE_KINDS)} with its values, e.g. {{loguniform: [0.001, 0.1]}}"
        )
    kind, values = next(iter(spec.items()))
    if kind in ("uniform", "loguniform", "randint") and not (
        len(values) == 2 and values[0] < values[1] and (kind != "loguniform" or values[0] > 0)
    ):
        raise PipelineError(
            f"{params.source}: sweep.space.{key}.{kind} = {values!r}: expected [low, high] "
            f"with low < high{' and low > 0' if kind == 'loguniform' else ''}"
        )
    if not values:
        raise PipelineError(f"{params.source}: sweep.space.{key}.{kind} is empty")
    return kind


def _draw(draw: random.Random, kind: str, spec: Mapping[str, Any]) -> Any:
    values = spec[kind]
    if kind == "choice":
        return values[draw.randrange(len(values))]
    if kind == "randint":
        return draw.randint(values[0], values[1])
    if kind == "uniform":
        value = draw.uniform(values[0], values[1])
    else:
        value = math.exp(draw.uniform(math.log(values[0]), math.log(values[1])))
    return float(f"{value:.4g}")  # four significant digits: a value people can paste


def run_trial(settings: dict[str, Any], data: dict[str, Any]) -> None:
    """One trial, in a Ray worker: train on the data's `train` part, report validation accuracy
    each epoch to Tune and to the trial's MLflow run. Never sees the test split."""
    import os

    import numpy as np
    import ray
    import torch
    from mlflow import MlflowClient
    from mlflow.entities import Metric
    from ray import tune

    from fashion_mlp.numerics import reproducible_numerics
    from fashion_mlp.params import ModelSpec, TrainParams
    from fashion_mlp.splits import Split
    from fashion_mlp.threads import CoreShare
    from fashion_mlp.train import fit, seeded_model

    reproducible_numerics()
    trial = settings["trial"]
    spec, params = ModelSpec(**trial["model"]), TrainParams(**trial["train"])
    run_id = trial["run_id"]
    client = MlflowClient(settings["tracking_uri"])
    # A retried trial restarts at epoch 1 (no checkpoints): its run keeps the epochs it has.
    logged = {metric.step for metric in client.get_metric_history(run_id, "val_acc")}
    attempts = int(client.get_run(run_id).data.tags.get("sweep_attempts", "0")) + 1
    client.set_tag(run_id, NODE_TAG, ray.get_runtime_context().get_node_id())
    client.set_tag(run_id, "ray_worker_pid", str(os.getpid()))
    client.set_tag(run_id, "sweep_attempts", str(attempts))
    client.update_run(run_id, status="RUNNING")

    def split(name: str) -> Split:
        images, labels = data[name]
        return Split(torch.from_numpy(np.array(images)), torch.from_numpy(np.array(labels)))

    def on_epoch_end(metrics: EpochMetrics) -> None:
        epoch = int(metrics["epoch"])
        if epoch not in logged:
            now = int(time.time() * 1000)
            client.log_batch(
                run_id, metrics=[Metric(key, metrics[key], now, epoch) for key in TRIAL_METRICS]
            )
        tune.report({key: metrics[key] for key in (*TRIAL_METRICS, "epoch")})

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
                held_out_name="val",
            )
        except PipelineError as err:
            # A configuration that diverges is a result, not a crash: no retry, run FAILED.
            client.set_tag(run_id, ERROR_TAG, str(err))


def run_sweep(
    params: Params,
    data_dir: Path,
    out_dir: Path,
    target: TrackingTarget,
    ray_address: str | None,
    show_progress: bool = True,
) -> list[TrialOutcome]:
    """Run the sweep, write its reports, track it; the trials, best first."""
    import mlflow

    from fashion_mlp.splits import carve_validation, load_split

    sweep = params.sweep
    plans = plan_trials(params)
    if ray_address and target.uri.startswith(SQLITE_PREFIX):
        raise PipelineError(
            f"a Ray cluster needs a tracking server: set MLFLOW_TRACKING_URI (got {target.uri}, "
            "a file that workers on other machines cannot reach)"
        )
    train = load_split(data_dir, "train")
    rest, validation = carve_validation(train, sweep.validation_size, sweep.seed)
    experiment_id = connect(target)
    client = mlflow.MlflowClient()
    try:
        parent = client.create_run(
            experiment_id,
            run_name=sweep.name,
            tags={"sweep": sweep.name, "ray_address": ray_address or "embedded"},
        )
        parent_id = parent.info.run_id
        client.log_batch(parent_id, params=_params_of(_sweep_settings(params)))
        outcomes = [
            TrialOutcome(plan, _create_child(client, experiment_id, parent_id, plan))
            for plan in plans
        ]
    except Exception as err:
        raise store_error(target, err) from None
    status = "FAILED"
    try:
        interrupted = _tune(params, outcomes, rest, validation, target, ray_address, show_progress)
        if interrupted:
            raise KeyboardInterrupt("the sweep was interrupted")
        _read_trial_tags(client, outcomes)
        ranked = sorted(outcomes, key=_rank)
        best = ranked[0]
        completed = best.status == "FINISHED" and not best.stopped_early
        test_acc = _test_best(best, rest, data_dir) if completed else None
        _publish_reports(params, ranked, test_acc, len(rest), Path(out_dir))
        if test_acc is not None:
            client.log_metric(parent_id, "best_trial_test_acc", test_acc)
            client.log_metric(parent_id, "best_trial_val_acc", ranked[0].val_acc)
            client.set_tag(parent_id, "best_trial", str(ranked[0].plan.index))
        status = "FINISHED"
        return ranked
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        _close_runs(client, parent_id, outcomes, status)


def _sweep_settings(params: Params) -> dict[str, Any]:
    sweep = params.sweep
    return sweep.model_dump(exclude={"base", "space", "scheduler"}) | {
        "grace_period": sweep.scheduler.grace_period,
        "reduction_factor": sweep.scheduler.reduction_factor,
        "base": json.dumps(sweep.base, sort_keys=True),
        "space": json.dumps(sweep.space, sort_keys=True),
    }


def _params_of(values: Mapping[str, Any]) -> list[Any]:
    from mlflow.entities import Param

    return [Param(key, str(value)) for key, value in values.items()]


def _create_child(client: Any, experiment_id: str, parent_id: str, plan: TrialPlan) -> str:
    run = client.create_run(
        experiment_id,
        run_name=f"{plan.config.name}",
        tags={PARENT_TAG: parent_id, TRIAL_TAG: str(plan.index)},
    )
    values = plan.config.flat() | {"trial": plan.index, "sampled": json.dumps(plan.sampled)}
    client.log_batch(run.info.run_id, params=_params_of(values))
    client.update_run(run.info.run_id, status="SCHEDULED")
    return run.info.run_id


def _tune(
    params: Params,
    outcomes: list[TrialOutcome],
    rest: Any,
    validation: Any,
    target: TrackingTarget,
    ray_address: str | None,
    show_progress: bool,
) -> bool:
    """Run every trial on Ray Tune; fill in the outcomes. True if the sweep was interrupted."""
    import os

    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from fashion_mlp.numerics import NUMERICS_ENV
    from fashion_mlp.threads import available_cores

    sweep = params.sweep
    # Credentials and HTTP bounds travel to the workers with the job, never in the configs.
    passed_on = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_HTTP_REQUEST_")
    env_vars = dict(NUMERICS_ENV) | {
        key: value for key, value in os.environ.items() if key.startswith(passed_on)
    }
    runtime_env: dict[str, Any] = {"env_vars": env_vars}
    if ray_address:
        # Our code reaches nodes that lack it (they need torch, mlflow and ray installed).
        runtime_env["py_modules"] = [str(Path(__file__).parent)]
    started_ray = not ray.is_initialized()
    if started_ray:
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
        ray.init(runtime_env=runtime_env, log_to_driver=False, logging_level="WARNING", **options)
    tracker = _tracker(outcomes, show_progress)
    tracker.progress.start()
    try:
        data = {
            "train": (rest.images.numpy(), rest.labels.numpy()),
            "validation": (validation.images.numpy(), validation.labels.numpy()),
        }
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, data=data), {"cpu": sweep.cpus_per_trial}
        )
        trials = [
            {
                "index": outcome.plan.index,
                "run_id": outcome.run_id,
                "model": outcome.plan.config.model.model_dump(),
                "train": outcome.plan.config.train.model_dump() | {"device": "cpu"},
            }
            for outcome in outcomes
        ]
        epochs = max(outcome.plan.config.train.epochs for outcome in outcomes)
        with (
            tempfile.TemporaryDirectory(prefix="fashion-mlp-tune-") as storage,
            _tune_environment(),
        ):
            tuner = tune.Tuner(
                trainable,
                param_space={
                    "trial": tune.grid_search(trials),
                    "tracking_uri": target.uri,
                    "cpus_per_trial": sweep.cpus_per_trial,
                },
                tune_config=tune.TuneConfig(
                    scheduler=ASHAScheduler(
                        metric="val_acc",
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
                    callbacks=[tracker],
                    failure_config=tune.FailureConfig(max_failures=2),
                    checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False),
                ),
            )
            tuner.fit()
    finally:
        tracker.progress.stop()
        if started_ray:
            ray.shutdown()
    return tracker.interrupted


# Tune's default reporter prints where its files are (a temporary folder here) even at
# verbose=0; its older reporter prints nothing at verbose=0: our progress bar reports. A trial
# that diverges ends without a last validation metric, which strict checking would turn into an
# error of the whole sweep; ASHA itself ignores such a result.
TUNE_ENVIRONMENT = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1"}


@contextlib.contextmanager
def _tune_environment() -> Iterator[None]:
    import os

    previous = {key: os.environ.get(key) for key in TUNE_ENVIRONMENT}
    os.environ.update(TUNE_ENVIRONMENT)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key)
            else:
                os.environ[key] = value


def _tracker(outcomes: list[TrialOutcome], show_progress: bool) -> Any:
    """A Ray Tune callback that records each trial's epochs and how it ended (completed,
    stopped early, errored), with a progress bar. Built here so importing this module does not
    import Ray."""
    from ray.tune import Callback
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    by_index = {outcome.plan.index: outcome for outcome in outcomes}

    class SweepTracker(Callback):
        def __init__(self) -> None:
            self.ended: set[int] = set()
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
            if "val_acc" not in result:
                return  # a diverged trial's last result carries no epoch
            outcome = by_index[trial.config["trial"]["index"]]
            epoch = {key: result[key] for key in (*TRIAL_METRICS, "epoch")}
            # A retried trial reports its epochs again from 1: keep one row per epoch.
            outcome.epochs = [row for row in outcome.epochs if row["epoch"] < epoch["epoch"]]
            outcome.epochs.append(epoch)

        def on_trial_complete(self, iteration, trials, trial, **info):
            outcome = by_index[trial.config["trial"]["index"]]
            outcome.status = "FINISHED"
            outcome.stopped_early = len(outcome.epochs) < outcome.plan.config.train.epochs
            self._ended(outcome)

        def on_trial_error(self, iteration, trials, trial, **info):
            outcome = by_index[trial.config["trial"]["index"]]
            outcome.status = "FAILED"
            error = trial.get_error()
            outcome.error = " ".join(str(error or "the trial crashed").split())[:500]
            self._ended(outcome)

        def _ended(self, outcome: TrialOutcome) -> None:
            self.ended.add(outcome.plan.index)
            done = [o.val_acc for o in by_index.values() if o.status == "FINISHED" and o.epochs]
            best = f"best val_acc {max(done):.4f}" if done else ""
            self.progress.update(self.task, completed=len(self.ended), best=best)

        @property
        def interrupted(self) -> bool:
            return len(self.ended) < len(by_index)

    return SweepTracker()


def _rank(outcome: TrialOutcome) -> tuple:
    """Completed trials first (by final validation accuracy), then stopped ones, then failed."""
    order = {"FINISHED": 0, "FAILED": 2, "KILLED": 3}[outcome.status]
    if outcome.status == "FINISHED" and outcome.stopped_early:
        order = 1
    accuracy = outcome.val_acc if not math.isnan(outcome.val_acc) else -1.0
    return (order, -accuracy, outcome.plan.index)


def _read_trial_tags(client: Any, outcomes: list[TrialOutcome]) -> None:
    """What trials wrote on their runs: the Ray node they ran on, the error they met."""
    for outcome in outcomes:
        tags = client.get_run(outcome.run_id).data.tags
        outcome.node = tags.get(NODE_TAG, "")
        if tags.get(ERROR_TAG) and outcome.status == "FINISHED":
            outcome.status, outcome.error = "FAILED", tags[ERROR_TAG]


def _close_runs(client: Any, parent_id: str, outcomes: list[TrialOutcome], status: str) -> None:
    """Every child run ends in a final state that says what happened, then the parent."""
    for outcome in outcomes:
        final = outcome.status
        if outcome.status == "FINISHED" and client.get_run(outcome.run_id).data.tags.get(ERROR_TAG):
            final = "FAILED"
        if outcome.error:
            client.set_tag(outcome.run_id, ERROR_TAG, outcome.error[:5000])
        if final == "FINISHED" and outcome.stopped_early:
            client.set_tag(outcome.run_id, STOPPED_TAG, str(len(outcome.epochs)))
        client.set_terminated(outcome.run_id, final)
    client.set_terminated(parent_id, status)


def _test_best(best: TrialOutcome, rest: Any, data_dir: Path) -> float:
    """Retrain the best configuration exactly as its trial did (same seed, same split, same
    weights: the numerics are thread-independent) and score it once on the test split."""
    from fashion_mlp.splits import load_split
    from fashion_mlp.threads import CoreShare
    from fashion_mlp.train import fit, seeded_model

    test = load_split(data_dir, "test")
    params = best.plan.config.train.model_copy(update={"device": "cpu"})
    with CoreShare() as cores:
        model, generator = seeded_model(best.plan.config.model, params)
        history, _ = fit(model, rest, test, params, generator, on_batch_end=cores.rebalance)
    return history[-1]["test_acc"]


REPORT_FILES = ("sweep.md", "trials.csv", "curves.png", "best.yaml")


def _publish_reports(
    params: Params,
    ranked: list[TrialOutcome],
    test_acc: float | None,
    trained_on: int,
    out_dir: Path,
) -> None:
    """Write every report into a staging folder, then move them into `out_dir` together: a
    failure on the way leaves the earlier reports as they were."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.") as staging:
        _write_reports(params, ranked, test_acc, trained_on, Path(staging))
        for name in REPORT_FILES:
            (Path(staging) / name).replace(out_dir / name)


def _write_reports(
    params: Params,
    ranked: list[TrialOutcome],
    test_acc: float | None,
    trained_on: int,
    out_dir: Path,
) -> None:
    import yaml

    keys = sorted({key for outcome in ranked for key in outcome.plan.sampled})
    rows = []
    for rank, outcome in enumerate(ranked, 1):
        rows.append(
            {
                "rank": rank,
                "trial": outcome.plan.index,
                # The value the trial trained with (a variant may have set a drawn key).
                **{key: json.dumps(_effective(outcome.plan, key)) for key in keys},
                "status": outcome.status,
                "epochs": len(outcome.epochs),
                "stopped_early": outcome.stopped_early,
                "val_acc": round(outcome.val_acc, 4) if outcome.epochs else "",
                "seconds": round(sum(row["epoch_seconds"] for row in outcome.epochs), 2),
                "ray_node": outcome.node[:12],
                "mlflow_run": outcome.run_id,
                "error": outcome.error,
            }
        )
    header = list(rows[0])
    lines = [",".join(header)]
    for row in rows:
        lines.append(",".join(_csv_cell(row[column]) for column in header))
    write_text_atomic(out_dir / "trials.csv", "\n".join(lines) + "\n")
    best = ranked[0]
    note = (
        f"# sweep {params.sweep.name}, trial {best.plan.index}: val_acc {best.val_acc:.4f} "
        f"after {len(best.epochs)} epochs; test_acc {test_acc:.4f} (measured once, after "
        "choosing)\n"
        if test_acc is not None
        else "# no trial finished\n"
    )
    name = f"{params.sweep.name}_best".replace("-", "_")
    pasted = yaml.safe_dump({"models": {name: best.plan.entry}}, sort_keys=False)
    write_text_atomic(out_dir / "best.yaml", note + pasted)
    _plot_curves(ranked, params.sweep.scheduler.grace_period, out_dir / "curves.png")
    markdown = _markdown(params, ranked, rows, keys, test_acc, trained_on)
    write_text_atomic(out_dir / "sweep.md", markdown)


def _effective(plan: TrialPlan, key: str) -> Any:
    return plan.sampled[key] if key == VARIANT else plan.entry.get(key, plan.sampled.get(key))


def _csv_cell(value: Any) -> str:
    text = str(value)
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


def _markdown(
    params: Params,
    ranked: list[TrialOutcome],
    rows: list[dict[str, Any]],
    keys: list[str],
    test_acc: float | None,
    trained_on: int,
) -> str:
    sweep = params.sweep
    best = ranked[0]
    stopped = sum(outcome.stopped_early for outcome in ranked)
    failed = sum(outcome.status == "FAILED" for outcome in ranked)
    columns = ["rank", "trial", *keys, "epochs", "val_acc", "status"]
    table = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        status = "stopped early" if row["stopped_early"] else row["status"].lower()
        cells = [str(row[c]) for c in columns[:-1]] + [status]
        table.append("| " + " | ".join(cells) + " |")
    headline = (
        f"Best: trial {best.plan.index}, validation accuracy {best.val_acc:.4f}; its test "
        f"accuracy, measured once after choosing, is {test_acc:.4f}."
        if test_acc is not None
        else "No trial finished."
    )
    return "\n".join(
        [
            f"# Sweep `{sweep.name}`",
            "",
            f"{len(ranked)} trials drawn with seed {sweep.seed}; each trained on "
            f"{trained_on:,} training images and was judged on "
            f"{sweep.validation_size:,} held-out ones (never on the test set). ASHA (grace period "
            f"{sweep.scheduler.grace_period} epochs, reduction factor "
            f"{sweep.scheduler.reduction_factor:g}) stopped {stopped} early; {failed} failed.",
            "",
            headline,
            "",
            "The winner as a `models` entry: `best.yaml`. Every trial: `trials.csv`; their "
            "validation curves: `curves.png`.",
            "",
            *table,
            "",
        ]
    )


def _plot_curves(ranked: list[TrialOutcome], grace_period: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5), layout="constrained")
    for outcome in sorted(ranked, key=lambda o: o.plan.index):
        if not outcome.epochs:
            continue
        epochs = [row["epoch"] for row in outcome.epochs]
        accuracy = [row["val_acc"] for row in outcome.epochs]
        style = ":" if outcome.stopped_early or outcome.status != "FINISHED" else "-"
        (line,) = ax.plot(epochs, accuracy, style, marker=".", label=f"trial {outcome.plan.index}")
        if outcome.stopped_early:
            ax.plot(epochs[-1], accuracy[-1], "x", color=line.get_color(), markersize=10)
    ax.axvline(grace_period, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Every trial's validation curve (x: stopped early by ASHA; dashed: grace period)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
