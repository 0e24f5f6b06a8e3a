"""Stage `register`: the best model by test accuracy becomes `champion` in the MLflow registry.

Reads params `models` and `mlflow`, `metrics/MODEL.json` and `models/MODEL/run.json` for each.
Registers the winner's logged model (its URI is in `run.json`) as a new version of the registered
model named after the experiment, points the alias `champion` at it, and writes
`reports/champion.json` (name, version, model, run id, test accuracy).

    fashion-mlp register --models-dir models --metrics-dir metrics --out reports/champion.json

Then: `fashion-mlp predict image.png`, or `mlflow models serve -m models:/NAME@champion`.
"""

import json
from pathlib import Path
from typing import Any

from fashion_mlp.atomic import write_text_atomic
from fashion_mlp.errors import PipelineError
from fashion_mlp.tracking import TrackingTarget, connect
from fashion_mlp.train import read_run_info

CHAMPION_ALIAS = "champion"


def champion_uri(registered_name: str) -> str:
    return f"models:/{registered_name}@{CHAMPION_ALIAS}"


def best_model(model_names: list[str], metrics_dir: Path) -> tuple[str, float]:
    """(name, test accuracy) of the most accurate model; ties go to the first listed."""
    scores = {}
    for name in model_names:
        path = Path(metrics_dir) / f"{name}.json"
        try:
            scores[name] = json.loads(path.read_text())["test_acc"]
        except FileNotFoundError:
            raise PipelineError(f"{path}: not found; run `dvc repro` to evaluate {name}") from None
    winner = max(scores, key=scores.__getitem__)
    return winner, scores[winner]


def register_champion(
    model_names: list[str], models_dir: Path, metrics_dir: Path, out: Path, target: TrackingTarget
) -> dict[str, Any]:
    import mlflow

    winner, accuracy = best_model(model_names, metrics_dir)
    run = read_run_info(Path(models_dir) / winner)
    connect(target)
    registered_name = target.experiment
    version = mlflow.register_model(run["model_uri"], registered_name)
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(registered_name, CHAMPION_ALIAS, version.version)
    client.set_model_version_tag(registered_name, version.version, "test_acc", f"{accuracy:.4f}")
    champion = {
        "registered_model": registered_name,
        "version": int(version.version),
        "uri": champion_uri(registered_name),
        "model": winner,
        "run_id": run["run_id"],
        "test_acc": accuracy,
    }
    write_text_atomic(Path(out), json.dumps(champion, indent=2) + "\n")
    return champion
