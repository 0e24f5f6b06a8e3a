"""The model registry: the `champion` alias, and loading only models that our `train` wrote.

The registered model is named after the experiment; its alias `champion` points at a version
whose source is the champion's LoggedModel (`models:/<model_id>`), so the registry version
carries the model's params and evaluation metrics.

A logged model is used (`fetch`: by `predict` and `serve`) only if it is exactly what `train`
logs: an MLflow PyTorch model in the `pt2` format (a torch.export graph) whose MLmodel names
only the `pytorch` and `python_function` flavors, loads through `mlflow.pytorch`, and carries
no code; whose files are the ones `train` writes and nothing else; and whose files hash to the
SHA-256 recorded on the LoggedModel when it was logged. A model in the `pickle` format, or one
with a `code` folder and a loader of its own, would run whatever its author put there the
moment it is loaded, and a tracking server is not a place to trust.
"""

import json
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fashion_mlp.errors import PipelineError
from fashion_mlp.tracking.runs import (
    FILES_TAG,
    MODEL_TAG,
    WEIGHTS_TAG,
    TrainedRun,
    files_digest,
    logged_files,
)
from fashion_mlp.tracking.store import Store, drop_duplicates, translated

CHAMPION_ALIAS = "champion"
VERSIONS_TAG = "mlflow.modelVersions"
# What `mlflow.pytorch.log_model(..., serialization_format="pt2")` writes for our networks.
MODEL_FILES = {
    "MLmodel",
    "conda.yaml",
    "python_env.yaml",
    "requirements.txt",
    "input_example.json",
    "serving_input_example.json",
    "data/model.pt2",
}
FLAVORS = {"pytorch", "python_function"}


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
    def promote(self, trained: TrainedRun) -> ChampionVersion:
        """Point the alias `champion` at the version holding `trained`'s model: the one that
        already does, or a new one. Retried, it makes no second version."""
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
        version = self._existing_version(trained) or self._new_version(trained)
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

    def _new_version(self, trained: TrainedRun) -> str:
        client = self.store.client
        version = client.create_model_version(
            self.name,
            source=f"models:/{trained.model_id}",
            run_id=trained.run_id,
            model_id=trained.model_id,
        ).version
        # No version of this model existed before: any other one now is a retried create's.
        drop_duplicates(
            self._versions_of(trained),
            version,
            lambda duplicate: client.delete_model_version(self.name, duplicate),
        )
        # The LoggedModel lists its registry versions (the Models tab's "Registered models"),
        # as MLflow's own register_model records them.
        logged = client.get_logged_model(trained.model_id)
        versions = json.loads(logged.tags.get(VERSIONS_TAG, "[]"))
        versions.append({"name": self.name, "version": version})
        client.set_logged_model_tags(trained.model_id, {VERSIONS_TAG: json.dumps(versions)})
        return version

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
            "weights_sha256": logged.tags.get(WEIGHTS_TAG, ""),
        }
        return logged, about

    @contextmanager
    def fetch(self, uri: str) -> Iterator[tuple[Path, dict[str, str]]]:
        """A checked local copy of the model at `uri` (models:/NAME@ALIAS, models:/NAME/VERSION,
        models:/MODEL_ID) and what it is (model, version, run); gone after the block."""
        if not uri.startswith("models:/"):
            raise PipelineError(
                f"refusing model {uri}: pass a registry URI (models:/NAME@ALIAS, "
                "models:/NAME/VERSION or models:/MODEL_ID), or a checkpoint file"
            )
        logged, about = self._describe(uri)
        with self._downloaded(f"models:/{about['model_id']}") as folder:
            refuse_unsafe_model(uri, folder, logged.tags.get(FILES_TAG))
            yield folder, about

    @contextmanager
    def _downloaded(self, uri: str) -> Iterator[Path]:
        import logging
        import os

        # A download progress bar would interleave with what the command prints, and MLflow's
        # note that a model's files are gone would precede our own line saying so.
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
        logging.getLogger("mlflow.store.artifact.artifact_repo").setLevel(logging.WARNING)
        with tempfile.TemporaryDirectory(prefix="fashion-mlp-model-") as scratch:
            yield Path(self._download(uri, scratch))

    @translated
    def _download(self, uri: str, destination: str) -> str:
        import mlflow

        return mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=destination, tracking_uri=self.store.target.uri
        )


def _model_id_of(version: Any) -> str:
    """The LoggedModel a registry version holds: its model_id, which MLflow's SQL registry does
    not keep; its source `models:/<model_id>` names it too."""
    source = version.source or ""
    return version.model_id or (
        source.removeprefix("models:/") if source.startswith("models:/m-") else ""
    )


def refuse_unsafe_model(uri: str, folder: Path, recorded_digest: str | None) -> None:
    """PipelineError unless `folder` is exactly a model our `train` logged (module docstring)."""
    import yaml

    folder = Path(folder)
    files = {path.relative_to(folder).as_posix() for path in logged_files(folder)}
    extra, missing = sorted(files - MODEL_FILES), sorted(MODEL_FILES - files)
    if extra:
        raise PipelineError(
            f"refusing model {uri}: not a model fashion-mlp trained (unexpected "
            f"{', '.join(extra)}); loading it could run code from whoever logged it"
        )
    # Fewer files than train writes, and none of another's: deleted from the artifact store
    # (by hand, `mlflow gc`, a lifecycle rule) or never fully uploaded. Nothing to fear, nothing
    # to load.
    if missing:
        gone = ", ".join(missing) if files else "all its files"
        raise PipelineError(
            f"cannot load model {uri}: {gone} missing from the artifact store (deleted?); "
            "retrain and register it (`dvc repro --force train@MODEL register`)"
        )
    try:
        flavors = yaml.safe_load((folder / "MLmodel").read_text(encoding="utf-8"))["flavors"]
        pytorch, pyfunc = flavors["pytorch"], flavors["python_function"]
        loader = pyfunc.get("loader_module")
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        raise PipelineError(
            f"refusing model {uri}: not an MLflow PyTorch model (no pytorch flavor in MLmodel)"
        ) from None
    problems = []
    if set(flavors) != FLAVORS:
        problems.append(f"flavors {', '.join(sorted(map(str, flavors)))}")
    if loader != "mlflow.pytorch":
        problems.append(f"its own loader {loader!r}")
    if pytorch.get("code") or pyfunc.get("code"):
        problems.append("code of its own")
    if pytorch.get("model_data") != "data" or pyfunc.get("data") != "data":
        problems.append("data outside data/")
    if problems:
        raise PipelineError(
            f"refusing model {uri}: it has {', '.join(problems)}; only MLflow's safe pt2 format "
            "without code is loaded (loading it could run code from whoever logged it)"
        )
    if recorded_digest is None or files_digest(folder) != recorded_digest:
        raise PipelineError(
            f"refusing model {uri}: its files are not the ones recorded when it was logged "
            f"({FILES_TAG} {'differs' if recorded_digest else 'is missing'})"
        )


def load_checked_model(folder: Path) -> Any:
    """Load a model folder that `refuse_unsafe_model` accepted (a torch.export graph, already in
    inference mode), with MLflow's pickle loading switched off as a second guard."""
    import mlflow

    return _load_without_pickle(folder, mlflow.pytorch.load_model, map_location="cpu")


def load_checked_pyfunc(folder: Path) -> Any:
    """The same folder as the PyFuncModel that MLflow's scoring server serves (with its
    signature); its loader is `mlflow.pytorch`, as `refuse_unsafe_model` checked."""
    import mlflow

    return _load_without_pickle(folder, mlflow.pyfunc.load_model)


def _load_without_pickle(folder: Path, load: Callable[..., Any], **options: Any) -> Any:
    import os

    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"
    try:
        return load(str(folder), **options)
    except Exception as err:
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise PipelineError(f"cannot load model {folder} ({reason})") from None
