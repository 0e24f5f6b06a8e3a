"""Stage `sweep` (sweeps/dvc.yaml; `make sweep`): a hyperparameter search on Ray Tune.

Reads `data/processed/train.safetensors` and params `sweep` (and the `train` keys its trials do
not set); never the test split while searching. A seeded validation split
(`sweep.validation_size` images) is carved from the 60,000 training images; each trial trains
on the rest and reports validation accuracy after every epoch. Ray Tune's ASHA scheduler stops
the weak trials early, seeing validation metrics only, and the ranking uses them only. The best
configuration is then retrained (same seed, same split: the same weights) and tested once; that
number is reported beside it, never used. Writes `reports/sweep/` (report.py).

MLflow gets one parent run named after the sweep (the search's definition as params, the best
trial's validation and test accuracy as metrics) and one child run per trial, opened when the
trial starts. The driver ends them all, so all carry its owner tags: after a SIGKILL or an OOM
kill, `fashion-mlp cleanup-runs` or the next sweep closes them KILLED. Trials log no models: the
winner becomes a model by pasting `best.yaml` into params.yaml, where the pipeline trains,
evaluates and logs it like every other.

    fashion-mlp sweep --params params.yaml --data-dir data/processed --out-dir reports/sweep
"""

import contextlib
import json
from pathlib import Path
from typing import Any

from fashion_mlp.epoch_metrics import held_out_acc
from fashion_mlp.errors import PipelineError
from fashion_mlp.params import Params
from fashion_mlp.splits import Split, carve_validation, load_split
from fashion_mlp.sweep.report import publish_reports
from fashion_mlp.sweep.space import plan_trials, sweep_params
from fashion_mlp.sweep.trials import TRIAL_STAGE, TrialOutcome, rank, start_ray, tune_trials
from fashion_mlp.tracking.orphans import owner_tags
from fashion_mlp.tracking.runs import Runs
from fashion_mlp.tracking.store import SQLITE_PREFIX, Store, StoreFailure

SWEEP_STAGE = "sweep"


def run_sweep(
    params: Params,
    data_dir: Path,
    out_dir: Path,
    store: Store,
    ray_address: str | None,
    show_progress: bool = True,
) -> list[TrialOutcome]:
    """Run the sweep, write its reports, track it; the trials, best first."""
    sweep = sweep_params(params)
    plans = plan_trials(params)
    if ray_address and store.target.uri.startswith(SQLITE_PREFIX):
        raise PipelineError(
            "a Ray cluster needs a tracking server: set MLFLOW_TRACKING_URI (got "
            f"{store.target.shown_uri}, a file that workers on other machines cannot reach)"
        )
    rest, validation = carve_validation(
        load_split(data_dir, "train"), sweep.validation_size, sweep.seed
    )
    # Before any run is created: a trial that no node can hold is refused, not left waiting.
    started_ray = start_ray(params, ray_address)
    with contextlib.ExitStack() as ray_session:
        if started_ray:
            import ray

            ray_session.callback(ray.shutdown)
        runs = Runs(store)
        # A dead driver's runs (SIGKILL, an OOM kill): the parent and its trials carry the
        # driver's owner tags (it ends every one of them), so they are closed here, whatever
        # sweep it ran.
        for stage in (SWEEP_STAGE, TRIAL_STAGE):
            runs.close_orphans(stage=stage)
        owner = owner_tags()
        tags = {"sweep": sweep.name, "ray_address": ray_address or "embedded"}
        # The orphans were closed above, of every sweep: no second search.
        parent_run = runs.start(
            sweep.name, SWEEP_STAGE, _definition(params), tags, owner=owner, close_orphans=False
        )
        with parent_run as parent:
            parent_id = parent.wait()
            outcomes = [TrialOutcome(plan) for plan in plans]
            settings = {
                "target": {"uri": store.target.uri, "experiment": store.target.experiment},
                "parent": parent_id,
                "owner": owner,
                "cpus_per_trial": sweep.cpus_per_trial,
            }
            try:
                interrupted = tune_trials(
                    params, outcomes, rest, validation, settings, show_progress
                )
                # Each trial's run ends as Tune saw the trial end; those whose worker died, or
                # that never ended because the sweep stopped, end KILLED.
                ended = {
                    o.run_id: o.run_end() for o in outcomes if o.run_id and o.status != "KILLED"
                }
                runs.end_children(parent_id, ended)
            except StoreFailure as failure:
                # No more calls to a store that failed (each could wait out MLflow's retries):
                # its runs stay open for cleanup-runs, and Ray stops now.
                raise StoreFailure(
                    f"{failure}; when the store works again, `fashion-mlp cleanup-runs` "
                    "closes the runs this sweep left open"
                ) from None
            except BaseException:
                # Interrupted (Ctrl-C, SIGTERM) or failed otherwise: the store works, so every
                # started trial's run ends, KILLED where it never finished.
                ended = {
                    o.run_id: o.run_end() for o in outcomes if o.run_id and o.status != "KILLED"
                }
                runs.end_children(parent_id, ended)
                raise
            finally:
                # Once the runs ended (Ray's shutdown takes seconds, which a second Ctrl-C may
                # cut), and before the winner's test, which needs no Ray.
                ray_session.close()
            if interrupted:
                raise KeyboardInterrupt("the sweep was interrupted")
            ranked = sorted(outcomes, key=rank)
            best = ranked[0]
            completed = best.status == "FINISHED" and not best.stopped_early
            test_acc = _test_best(best, rest, data_dir) if completed else None
            publish_reports(sweep, ranked, test_acc, len(rest), Path(out_dir))
            if test_acc is not None:
                metrics = {"best_trial_val_acc": best.val_acc, "best_trial_test_acc": test_acc}
                parent.log_metrics(metrics, 0)
                parent.set_tags({"best_trial": str(best.plan.index)})
    return ranked


def _definition(params: Params) -> dict[str, Any]:
    """The sweep's definition, as the parent run's params."""
    sweep = sweep_params(params)
    return sweep.model_dump(exclude={"base", "space", "scheduler"}) | {
        "grace_period": sweep.scheduler.grace_period,
        "reduction_factor": sweep.scheduler.reduction_factor,
        "base": json.dumps(sweep.base, sort_keys=True),
        "space": json.dumps(
            {key: entry.model_dump() for key, entry in sweep.space.items()}, sort_keys=True
        ),
    }


def _test_best(best: TrialOutcome, rest: Split, data_dir: Path) -> float:
    """Retrain the best configuration exactly as its trial did (same seed, same split, same
    weights: the numerics are thread-independent) and score it once on the test split."""
    from fashion_mlp.linalg import pin_numerics
    from fashion_mlp.threads import CoreShare
    from fashion_mlp.train import fit, seeded_model

    test = load_split(data_dir, "test")
    params = best.plan.config.train.model_copy(update={"device": "cpu"})
    pin_numerics(params.numerics)
    with CoreShare() as cores:
        model, generator = seeded_model(best.plan.config.model, params)
        fitted = fit(model, rest, test, params, generator, on_batch_end=cores.rebalance)
    return fitted.history[-1][held_out_acc("test")]
