"""Stage `register`: the declared champion model becomes `champion` in the MLflow registry.

Reads params `mlflow` (`mlflow.champion` names the model: a declared choice, made on validation
accuracy, never by picking the best test score among the presets, which would be selection on
the test set) and that model's `run.json` and `metrics/MODEL.json`. Registers its logged model
as a new version of the registered model named after the experiment (unless the alias already
points at this very run's model), points the alias `champion` at it, and writes
`reports/champion.json` (name, version, model, run id, test accuracy for information).

    fashion-mlp register --models-dir models --metrics-dir metrics --out reports/champion.json

Then: `fashion-mlp predict image.png`, or `mlflow models serve -m models:/NAME@champion`.
"""

import json
from pathlib import Path
from typing import Any

from fashion_mlp.artifacts import read_metrics, read_run_info
from fashion_mlp.atomic import write_text_atomic
from fashion_mlp.tracking import TrackingTarget, connect, store_error

CHAMPION_ALIAS = "champion"


def champion_uri(registered_name: str) -> str:
    return f"models:/{registered_name}@{CHAMPION_ALIAS}"


def register_champion(
    champion: str, models_dir: Path, metrics_dir: Path, out: Path, target: TrackingTarget
) -> dict[str, Any]:
    import mlflow
    from mlflow.exceptions import MlflowException

    run = read_run_info(Path(models_dir) / champion)
    accuracy = read_metrics(Path(metrics_dir) / f"{champion}.json")["test_acc"]
    connect(target)
    registered_name = target.experiment
    client = mlflow.MlflowClient()
    try:
        version = _current_version(client, registered_name, run.run_id)
        if version is None:
            version = mlflow.register_model(run.model_uri, registered_name)
            client.set_registered_model_alias(registered_name, CHAMPION_ALIAS, version.version)
    except MlflowException as err:
        raise store_error(target, err) from None
    summary = {
        "registered_model": registered_name,
        "version": int(version.version),
        "uri": champion_uri(registered_name),
        "model": champion,
        "run_id": run.run_id,
        "test_acc": accuracy,
    }
    write_text_atomic(Path(out), json.dumps(summary, indent=2) + "\n")
    return summary


def _current_version(client: Any, registered_name: str, run_id: str) -> Any:
    """The version the alias points at, if it holds this run's model (no new version needed)."""
    from mlflow.exceptions import MlflowException

    try:
        current = client.get_model_version_by_alias(registered_name, CHAMPION_ALIAS)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise
    return current if current.run_id == run_id else None
