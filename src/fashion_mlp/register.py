"""Stage `register`: the declared champion model becomes `champion` in the MLflow registry.

Reads params `mlflow.champion` (the model: a declared choice, made on validation accuracy, never
by picking the best test score among the presets, which would be selection on the test set) and
`mlflow.champion_min_test_acc` (the quality gate), and that model's
`models/MODEL/model.safetensors` and `metrics/MODEL.json`. A model tested below the floor is
refused, as MLflow's model validation thresholds would refuse it: nothing is registered and
nothing written. Otherwise it finds the evaluated training run of exactly these weights (by their
SHA-256, confirmed by the bytes the run logged: tracking/provenance.py refuses, by name and
author, a run whose tags claim them and whose model does not hold them), registers its
LoggedModel as a new version of the registered model named after the experiment (unless the
alias already points at that very model) and points the alias `champion` at it. Writes
`reports/champion.json`: the model, its weights' SHA-256, its metrics and whether the registry
holds it (`registry`), all functions of the inputs (the registry version and the run id are
printed, and live in MLflow).

    fashion-mlp register --models-dir models --metrics-dir metrics --out reports/champion.json

Registry moves come only from the main workspace's `dvc repro`. Under `dvc exp run` (queued or
not; DVC sets DVC_EXP_NAME) the stage checks the same things and writes the same file, saying
that the registry was left alone and how to promote (an experiment must not change what
production serves): `dvc exp apply NAME && dvc repro --force --single-item register`.

Then: `fashion-mlp predict image.png`, or `fashion-mlp serve`.
"""

from pathlib import Path

from fashion_mlp.artifacts import MODEL_FILE, InputSnapshot, write_json
from fashion_mlp.errors import PipelineError
from fashion_mlp.metrics import read_metrics
from fashion_mlp.tracking.provenance import TrainedRun
from fashion_mlp.tracking.registry import ChampionVersion, Registry
from fashion_mlp.tracking.runs import Runs

GATED_METRIC = "test_acc"
PROMOTED = "promoted"
LEFT_ALONE = "left alone by a DVC experiment; promote: dvc repro --force --single-item register"


def register_champion(
    champion: str,
    floor: float,
    models_dir: Path,
    metrics_dir: Path,
    out: Path,
    runs: Runs,
    registry: Registry,
    inputs: InputSnapshot,
    experiment: str | None,
) -> tuple[TrainedRun, ChampionVersion | None]:
    """Promote the champion's run, unless this is DVC experiment `experiment` (then no
    version); `inputs` (the params file that named it) must not have changed since it was read,
    nor the model and metrics since they are read here."""
    model_file = Path(models_dir) / champion / MODEL_FILE
    metrics_file = Path(metrics_dir) / f"{champion}.json"
    inputs = inputs.extended(model_file, metrics_file)
    digest = inputs.weights_digest(model_file)
    metrics = read_metrics(metrics_file)
    if metrics[GATED_METRIC] < floor:
        raise PipelineError(
            f"{champion}: {GATED_METRIC} {metrics[GATED_METRIC]:.4f} is below the floor {floor} "
            "(params mlflow.champion_min_test_acc): a collapsed training is never champion, "
            "and nothing was registered; fix its training or name another mlflow.champion"
        )
    trained = runs.trained(champion, digest, evaluated=True, graph=True)
    inputs.verify()
    # The registry page shows a version's description: which model, how good, which weights.
    description = (
        f"{champion}: {GATED_METRIC} {metrics[GATED_METRIC]:.4f}, weights sha256 {digest[:12]}"
    )
    version = None if experiment else registry.promote(trained, champion, description)
    summary = {"model": champion, "weights_sha256": digest, **metrics}
    write_json(Path(out), summary | {"registry": LEFT_ALONE if experiment else PROMOTED})
    return trained, version
