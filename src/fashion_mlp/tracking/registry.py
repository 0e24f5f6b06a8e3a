"""The model registry: the `champion` alias, and the checkpoints of registered models.

The registered model is named after the experiment; its alias `champion` points at a version
whose source is the champion's LoggedModel (`models:/<model_id>`), so the registry version
carries the model's params and evaluation metrics. `register` promotes a run provenance.py
confirmed by its bytes.

`fetch` (for `predict` and `serve`) reads a registered model's checkpoint only if the model's
files are exactly what `train` logs (models.refuse_unsafe_model), and runs none of them: the
caller compares the checkpoint with the weights it trusts and builds the network itself.
"""

import json
from dataclasses import dataclass
from typing import Any

from fashion_mlp.errors import PipelineError
from fashion_mlp.tracking.models import CHECKPOINT_COPY, downloaded, refuse_unsafe_model
from fashion_mlp.tracking.provenance import TrainedRun
from fashion_mlp.tracking.store import Store, translated
from fashion_mlp.tracking.tags import FILES_TAG, MODEL_TAG

CHAMPION_ALIAS = "champion"
VERSIONS_TAG = "mlflow.modelVersions"


def champion_uri(registered_name: str) -> str:
    return f"models:/{registered_name}@{CHAMPION_ALIAS}"


@dataclass(frozen=True)
class ChampionVersion:
    registered_model: str
    version: int
    model_id: str
    run_id: str
    moved: bool  # False when the alias already pointed at this model


class Registry:
    def __init__(self, store: Store):
        self.store = store

    @property
    def name(self) -> str:
        """The registered model: named after the experiment."""
        return self.store.target.experiment

    @translated
    def promote(self, trained: TrainedRun, model: str, description: str) -> ChampionVersion:
        """Point the alias `champion` at the version holding `trained`'s model (`model` in
        params.yaml): the one that already does, or a new one with `description` and the tag
        `model`. Retried, it makes no second version."""
        from mlflow.exceptions import MlflowException

        client = self.store.client
        try:
            current = client.get_model_version_by_alias(self.name, CHAMPION_ALIAS)
        except MlflowException as err:
            if err.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise
            current = None
        if current is not None and _model_id_of(current) == trained.model_id:
            return ChampionVersion(
                self.name, int(current.version), trained.model_id, trained.run_id, moved=False
            )
        try:
            client.create_registered_model(self.name)
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        version = self._existing_version(trained) or self._new_version(trained, model, description)
        client.set_registered_model_alias(self.name, CHAMPION_ALIAS, version)
        return ChampionVersion(
            self.name, int(version), trained.model_id, trained.run_id, moved=True
        )

    def _versions_of(self, trained: TrainedRun) -> list[str]:
        """This registered model's versions that hold `trained`'s model, oldest first."""
        found = self.store.client.search_model_versions(
            f"name = '{self.name}' and run_id = '{trained.run_id}'"
        )
        mine = [v.version for v in found if _model_id_of(v) == trained.model_id]
        return sorted(mine, key=int)

    def _existing_version(self, trained: TrainedRun) -> str | None:
        versions = self._versions_of(trained)
        return versions[0] if versions else None

    def _new_version(self, trained: TrainedRun, model: str, description: str) -> str:
        client = self.store.client
        # No version of this model existed before: any other one after is a retried create's.
        version = self.store.create_once(
            lambda _: (
                client.create_model_version(
                    self.name,
                    source=f"models:/{trained.model_id}",
                    run_id=trained.run_id,
                    model_id=trained.model_id,
                    tags={"model": model},
                    description=description,
                ).version
            ),
            lambda _: self._versions_of(trained),
            lambda duplicate: client.delete_model_version(self.name, duplicate),
        )
        # The LoggedModel lists its registry versions (the Models tab's "Registered models"),
        # as MLflow's own register_model records them.
        logged = client.get_logged_model(trained.model_id)
        versions = json.loads(logged.tags.get(VERSIONS_TAG, "[]"))
        versions.append({"name": self.name, "version": version})
        client.set_logged_model_tags(trained.model_id, {VERSIONS_TAG: json.dumps(versions)})
        return version

    def _author(self, run_id: str | None) -> str:
        if not run_id:
            return "an unknown user"
        return self.store.client.get_run(run_id).info.user_id or "an unknown user"

    @translated
    def _describe(self, uri: str) -> tuple[Any, dict[str, str]]:
        from mlflow.exceptions import MlflowException

        client = self.store.client
        reference = uri.removeprefix("models:/")
        try:
            if "@" in reference:
                version = client.get_model_version_by_alias(*reference.split("@", 1))
            elif "/" in reference:
                version = client.get_model_version(*reference.split("/", 1))
            else:
                version = None
            model_id = _model_id_of(version) if version is not None else reference
            logged = client.get_logged_model(model_id) if model_id else None
        except MlflowException as err:
            if err.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise
            raise PipelineError(
                f"cannot load model {uri} from {self.store.target.shown_uri} (not found); run "
                "`dvc repro` to train and register one, or pass --model "
                "models/mlp1/model.safetensors"
            ) from None
        if logged is None:
            raise PipelineError(f"refusing model {uri}: its version points at no logged model")
        about = {
            "model": logged.tags.get(MODEL_TAG, logged.name),
            "model_id": model_id,
            "run_id": logged.source_run_id or "",
            "version": str(version.version) if version is not None else "",
            "registered_model": version.name if version is not None else "",
            "author": self._author(logged.source_run_id),
        }
        return logged, about

    @translated
    def fetch(self, uri: str) -> tuple[bytes, dict[str, str]]:
        """The checkpoint of the model at `uri` (models:/NAME@ALIAS, models:/NAME/VERSION,
        models:/MODEL_ID) and what it is (model, version, run, author). Its files must be
        exactly what our `train` logs (models.refuse_unsafe_model): only then is its checkpoint
        read, and no code of it ever runs. The caller compares the checkpoint's bytes with the
        weights it trusts (champion.py): the tags say only what someone wrote."""
        if not uri.startswith("models:/"):
            raise PipelineError(
                f"refusing model {uri}: pass a registry URI (models:/NAME@ALIAS, "
                "models:/NAME/VERSION or models:/MODEL_ID), or a checkpoint file"
            )
        logged, about = self._describe(uri)
        name = f"model {uri}"
        with downloaded(self.store, about["model_id"]) as folder:
            refuse_unsafe_model(name, folder, logged.tags.get(FILES_TAG))
            checkpoint = (folder / CHECKPOINT_COPY).read_bytes()
        return checkpoint, about


def _model_id_of(version: Any) -> str:
    """The LoggedModel a registry version holds: its model_id, which MLflow's SQL registry does
    not keep; its source `models:/<model_id>` names it too."""
    source = version.source or ""
    return version.model_id or (
        source.removeprefix("models:/") if source.startswith("models:/m-") else ""
    )
