"""Stage `register`: the declared champion model becomes `champion` in the MLflow registry.

Reads params `mlflow.champion` (the model: a declared choice, made on validation accuracy, never
by picking the best test score among the presets, which would be selection on the test set) and
that model's `models/MODEL/model.safetensors` and `metrics/MODEL.json`. Finds the evaluated
training run of exactly these weights (by their SHA-256), registers its LoggedModel as a new
version of the registered model named after the experiment (unless the alias already points at
that very model) and points the alias `champion` at it. Writes `reports/champion.json`: the
model, its weights' SHA-256 and its metrics, all functions of the inputs (the registry version
and the run id are printed, and live in MLflow).

    fashion-mlp register --models-dir models --metrics-dir metrics --out reports/champion.json

Registry moves come only from the main workspace's `dvc repro`. Under `dvc exp run`
(queued or not; DVC sets DVC_EXP_NAME) the stage checks the same things and writes the same
file, but leaves the alias alone: an experiment must not change what production serves. To
promote an experiment's model: `dvc exp apply NAME && dvc repro --force --single-item register`.

Then: `fashion-mlp predict image.png`, or `fashion-mlp serve`.
"""

from pathlib import Path

from fashion_mlp.artifacts import MODEL_FILE, InputSnapshot, weights_digest, write_json
from fashion_mlp.metrics import read_metrics
from fashion_mlp.tracking.registry import ChampionVersion, Registry
from fashion_mlp.tracking.runs import Runs


def register_champion(
    champion: str,
    models_dir: Path,
    metrics_dir: Path,
    out: Path,
    runs: Runs,
    registry: Registry,
    inputs: InputSnapshot,
    experiment: str | None,
) -> ChampionVersion | None:
    """Promote the champion's run, unless this is DVC experiment `experiment` (then None);
    `inputs` (the params file that named it) must not have changed since it was read, nor
    the model and metrics since they are read here."""
    model_file = Path(models_dir) / champion / MODEL_FILE
    metrics_file = Path(metrics_dir) / f"{champion}.json"
    inputs = inputs.extended(model_file, metrics_file)
    digest = weights_digest(model_file)
    metrics = read_metrics(metrics_file)
    trained = runs.trained(champion, digest, evaluated=True)
    inputs.verify()
    version = None if experiment else registry.promote(trained)
    write_json(Path(out), {"model": champion, "weights_sha256": digest, **metrics})
    return version
