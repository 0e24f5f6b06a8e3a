"""Logged models: a trained network logged as an MLflow LoggedModel, and the hash of its files.

A model is logged in MLflow's safe `pt2` format (a torch.export graph: loading it runs no
pickled code), with a signature and a real input example, and beside it a copy of the
checkpoint train wrote (`extra_files/model.safetensors`, the very bytes of
models/MODEL/model.safetensors): registry.py checks that copy, not tags, before it registers or
serves a model. The run and the model are tagged with the checkpoint's SHA-256, and the model
with the SHA-256 of all its files as logged.
"""

import hashlib
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fashion_mlp.documents import read_yaml
from fashion_mlp.errors import PipelineError
from fashion_mlp.tracking.store import Store
from fashion_mlp.tracking.tags import CREATE_TOKEN_TAG, FILES_TAG, MODEL_TAG, WEIGHTS_TAG

# Where the checkpoint's copy lies in a logged model's folder (mlflow.pytorch's extra_files).
CHECKPOINT_COPY = "extra_files/model.safetensors"
# Written by MLflow's downloader of a models:/ URI (the registered name and version it came by).
DOWNLOAD_NOTE = "registered_model_meta"
# What `mlflow.pytorch.log_model(..., serialization_format="pt2")` writes for our networks.
MODEL_FILES = {
    "MLmodel",
    "conda.yaml",
    "python_env.yaml",
    "requirements.txt",
    "input_example.json",
    "serving_input_example.json",
    "data/model.pt2",
    CHECKPOINT_COPY,
}
FLAVORS = {"pytorch", "python_function"}
MAX_MLMODEL_BYTES = 1_000_000


def log_model(
    store: Store,
    run_id: str,
    params: dict[str, Any],
    model: Any,
    example: Any,
    name: str,
    checkpoint: bytes,
) -> str:
    """Log `model` (with `checkpoint`, its checkpoint file's bytes) as a LoggedModel named
    `name` of run `run_id`; its model_id."""
    import mlflow
    import torch
    from mlflow.models import infer_signature

    client = store.client
    with torch.inference_mode():
        output = model.eval()(torch.from_numpy(example)).numpy()
    digest = hashlib.sha256(checkpoint).hexdigest()
    # Created here, not by log_model: given the run, log_model would also link every metric
    # the run logged at that step (the last epoch's, and system metrics) to the model, beside
    # the evaluation's. The Models tab should show what evaluate measured, on its data.
    model_id = store.create_once(
        lambda token: (
            client.create_logged_model(
                store.experiment_id,
                name=name,
                source_run_id=run_id,
                params={key: str(value) for key, value in params.items()},
                tags={MODEL_TAG: name, WEIGHTS_TAG: digest, CREATE_TOKEN_TAG: token},
            ).model_id
        ),
        lambda token: [
            copy.model_id
            for copy in client.search_logged_models(
                [store.experiment_id], f"tags.`{CREATE_TOKEN_TAG}` = '{token}'"
            )
        ],
        client.delete_logged_model,
    )
    with tempfile.TemporaryDirectory(prefix="fashion-mlp-checkpoint-") as scratch:
        copy = Path(scratch) / Path(CHECKPOINT_COPY).name
        copy.write_bytes(checkpoint)
        mlflow.pytorch.log_model(
            model,
            name=name,
            model_id=model_id,
            # Named, not left to MLflow: its default differs between versions and on Databricks.
            serialization_format="pt2",
            signature=infer_signature(example, output),
            input_example=example,
            extra_files=[str(copy)],
            # The network needs only torch. Naming it skips MLflow's requirement inference, a
            # subprocess that costs ~7 s per logged model; the example is checked by our tests,
            # not by loading the model once more.
            pip_requirements=mlflow.pytorch.get_default_pip_requirements(),
            validate_serving_input=False,
        )
    with tempfile.TemporaryDirectory(prefix="fashion-mlp-logged-") as scratch:
        folder = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{model_id}", dst_path=scratch, tracking_uri=store.target.uri
        )
        client.set_logged_model_tags(model_id, {FILES_TAG: files_digest(Path(folder))})
    return model_id


def logged_files(folder: Path) -> list[Path]:
    """A downloaded model's files, without the note MLflow's downloader adds beside them."""
    return sorted(
        path for path in Path(folder).rglob("*") if path.is_file() and path.name != DOWNLOAD_NOTE
    )


def files_digest(folder: Path) -> str:
    """SHA-256 over every file of a downloaded model folder (relative path and content)."""
    digest = hashlib.sha256()
    for path in logged_files(folder):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def refuse_unsafe_model(name: str, folder: Path, recorded_digest: str | None) -> None:
    """PipelineError, naming `name` (e.g. "model models:/fashion-mlp@champion"), unless
    `folder` is exactly a model our `train` logged: an MLflow PyTorch model in the pt2 format
    (a torch.export graph) whose MLmodel names only the pytorch and python_function flavors,
    loads through mlflow.pytorch and carries no code; whose files are the ones `train` writes
    and nothing else; and whose files hash to the SHA-256 recorded when it was logged. A model
    in the pickle format, or one with code of its own, would run whatever its author put there
    the moment it is loaded, and a tracking server is not a place to trust."""
    folder = Path(folder)
    files = {path.relative_to(folder).as_posix() for path in logged_files(folder)}
    extra, missing = sorted(files - MODEL_FILES), sorted(MODEL_FILES - files)
    if extra:
        raise PipelineError(
            f"refusing {name}: not a model fashion-mlp trained (unexpected "
            f"{', '.join(extra)}); loading it could run code from whoever logged it"
        )
    # Fewer files than train writes, and none of another's: deleted from the artifact store
    # (by hand, `mlflow gc`, a lifecycle rule) or never fully uploaded. Nothing to fear, nothing
    # to load.
    if missing:
        gone = ", ".join(missing) if files else "all its files"
        raise PipelineError(
            f"cannot load {name}: {gone} missing from the artifact store (deleted?); "
            "retrain and register it (`dvc repro --force train@MODEL register`)"
        )
    try:
        mlmodel = read_yaml(folder / "MLmodel", MAX_MLMODEL_BYTES, "MLmodel file")
        flavors = mlmodel["flavors"]
        pytorch, pyfunc = flavors["pytorch"], flavors["python_function"]
        loader = pyfunc.get("loader_module")
    except (PipelineError, KeyError, TypeError, AttributeError):
        raise PipelineError(
            f"refusing {name}: not an MLflow PyTorch model (no pytorch flavor in MLmodel)"
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
            f"refusing {name}: it has {', '.join(problems)}; only MLflow's safe pt2 format "
            "without code is loaded (loading it could run code from whoever logged it)"
        )
    if recorded_digest is None or files_digest(folder) != recorded_digest:
        raise PipelineError(
            f"refusing {name}: its files are not the ones recorded when it was logged "
            f"({FILES_TAG} {'differs' if recorded_digest else 'is missing'})"
        )


@contextmanager
def downloaded(store: Store, model_id: str) -> Iterator[Path]:
    """A local copy of logged model `model_id`'s files, gone after the block."""
    import logging
    import os

    import mlflow

    # A download progress bar would interleave with what the command prints, and MLflow's
    # note that a model's files are gone would precede our own line saying so.
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    logging.getLogger("mlflow.store.artifact.artifact_repo").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="fashion-mlp-model-") as scratch:
        yield Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{model_id}",
                dst_path=scratch,
                tracking_uri=store.target.uri,
            )
        )


def checked_checkpoint(name: str, folder: Path, expected_sha256: str, graph: bool) -> bytes:
    """The checkpoint a downloaded logged model (`folder`, checked by refuse_unsafe_model)
    carries, if it is the one with SHA-256 `expected_sha256`; with `graph`, the torch.export
    graph must also hold exactly its tensors (the weights that `mlflow models serve` would
    run), and no constants of its own. A PipelineError naming `name` otherwise: tags can be
    written by anyone who may edit the experiment; these bytes are what was logged."""
    checkpoint = (Path(folder) / CHECKPOINT_COPY).read_bytes()
    found = hashlib.sha256(checkpoint).hexdigest()
    if found != expected_sha256:
        raise PipelineError(
            f"refusing {name}: its logged weights (sha256 {found[:12]}...) are not the "
            f"expected ones (sha256 {expected_sha256[:12]}...)"
        )
    if graph:
        problem = _graph_problem(Path(folder) / "data/model.pt2", checkpoint)
        if problem:
            raise PipelineError(f"refusing {name}: its logged graph {problem}")
    return checkpoint


def _graph_problem(program_file: Path, checkpoint: bytes) -> str | None:
    import torch
    from safetensors.torch import load

    try:
        program = torch.export.load(str(program_file))
    except Exception as err:  # any failure to read a program is a refusal, named
        return f"cannot be read ({' '.join(str(err).split())[:100]})"
    tensors = load(checkpoint)
    held = dict(program.state_dict)
    if program.constants:
        return f"carries constants of its own ({', '.join(sorted(program.constants))[:100]})"
    if set(held) != set(tensors):
        return "holds other tensors than its checkpoint"
    differing = [name for name, tensor in tensors.items() if not torch.equal(held[name], tensor)]
    return f"holds other values of {', '.join(differing)}" if differing else None
