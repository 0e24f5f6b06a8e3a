"""The files stages hand to each other: their names, their one reader and writer each.

    configs/MODEL.json            the model's effective params (`configure`; read by `train`)
    models/MODEL/model.safetensors  the trained weights and architecture (`train`; model.py)
    models/MODEL/history.csv      one row per epoch (`train`; a DVC plot)
    models/MODEL/test_logits.safetensors  the trained model's logits for every test image
                                  (`train`, which has the model in memory; read by `evaluate`)
    metrics/MODEL.json            the evaluation metrics (`evaluate`; metrics.py)
    evaluation/MODEL/             per-class accuracy, predictions, confusion matrix (`evaluate`)

Every one of them is a function of the stage's inputs: no wall-clock time, run id or registry
version is written here (those live in MLflow), so an unchanged input gives a byte-identical
file and DVC stops a rerun there. A model's MLflow run is found by its weights' SHA-256
(`weights_digest`), which the run carries as a tag. Readers refuse a malformed file with one
line naming it. Standard library and pydantic only: torch-free stages read these too. The
folders' defaults are in layout.py.
"""

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fashion_mlp.atomic import write_text_atomic
from fashion_mlp.dataset import NUM_CLASSES
from fashion_mlp.documents import parse_json, read_json
from fashion_mlp.epoch_metrics import EPOCH, EpochMetrics, epoch_keys
from fashion_mlp.errors import PipelineError
from fashion_mlp.params import ModelSpec, RunConfig, TrainParams
from fashion_mlp.tables import csv_text

MODEL_FILE = "model.safetensors"
HISTORY_FILE = "history.csv"
TEST_LOGITS_FILE = "test_logits.safetensors"
# A checkpoint is a safetensors file whose one metadata entry describes it (safetensors keeps
# metadata as a map of strings; one key keeps the header's bytes in a fixed order).
CHECKPOINT_KEY = "fashion_mlp"
CHECKPOINT_FORMAT = 1
MAX_CONFIG_BYTES = 100_000
# A checkpoint's header lists its tensors and our metadata: a few kilobytes.
MAX_HEADER_BYTES = 1_000_000
# The per-epoch numbers history.csv keeps, after `epoch`: the registry's (epoch_metrics.py),
# the held-out split being the test split.
HISTORY_KEYS = epoch_keys("test")


def config_path(configs_dir: Path, name: str) -> Path:
    return Path(configs_dir) / f"{name}.json"


def config_text(config: RunConfig) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n"


def read_run_config(path: Path) -> RunConfig:
    path = Path(path)
    hint = "run `fashion-mlp configure` (or `dvc repro`) to write it"
    try:
        content = read_json(path, MAX_CONFIG_BYTES, "model config")
    except PipelineError as err:
        raise PipelineError(f"{err}; {hint}") from None
    try:
        return RunConfig(
            name=str(content["name"]),
            model=ModelSpec.model_validate(content["model"]),
            train=TrainParams.model_validate(content["train"]),
        )
    except (ValueError, KeyError, TypeError, ValidationError) as err:
        reason = " ".join(str(err).split())[:200]
        raise PipelineError(f"{path}: not a model config ({reason}); {hint}") from None


def history_csv(history: list[EpochMetrics]) -> str:
    """history.csv's content: `epoch` and HISTORY_KEYS, one row per epoch (no timings)."""
    return csv_text(history, [EPOCH, *HISTORY_KEYS])


def read_history(path: Path) -> list[EpochMetrics]:
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as stream:
            rows = list(csv.DictReader(stream))
        history = [
            {key: (int(v) if key == EPOCH else float(v)) for key, v in row.items()} for row in rows
        ]
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run `fashion-mlp train` first") from None
    except (ValueError, TypeError, UnicodeDecodeError) as err:
        raise PipelineError(f"{path}: not a history file ({err}); retrain the model") from None
    if not history or set(history[0]) != {EPOCH, *HISTORY_KEYS}:
        raise PipelineError(f"{path}: not a history file of epochs; retrain the model")
    return history


def checkpoint_metadata(spec: ModelSpec) -> dict[str, str]:
    """The metadata of a checkpoint of a model of architecture `spec`."""
    description = {"format": CHECKPOINT_FORMAT, "model_spec": spec.model_dump()}
    return {CHECKPOINT_KEY: json.dumps(description, sort_keys=True)}


def checkpoint_spec(metadata: dict[str, str] | None) -> ModelSpec:
    """The architecture a checkpoint's metadata describes; ValueError if it is not ours."""
    try:
        description = json.loads((metadata or {})[CHECKPOINT_KEY])
    except (KeyError, TypeError, json.JSONDecodeError):
        raise ValueError("no fashion-mlp description in its metadata") from None
    if not isinstance(description, dict) or description.get("format") != CHECKPOINT_FORMAT:
        raise ValueError("not a checkpoint format this version reads")
    try:
        return ModelSpec.model_validate(description["model_spec"])
    except (KeyError, ValidationError) as err:
        raise ValueError(f"its architecture: {' '.join(str(err).split())[:100]}") from None


def safetensors_metadata(prefix: bytes, file_size: int) -> dict[str, str] | None:
    """The metadata of a safetensors file of `file_size` bytes, from its first bytes (an 8-byte
    length, then that many bytes of JSON header): no tensor is read. ValueError if malformed."""
    if len(prefix) < 8:
        raise ValueError("too short for a safetensors file")
    size = int.from_bytes(prefix[:8], "little")
    if size > file_size - 8 or size > len(prefix) - 8:
        raise ValueError("the header is longer than the file")
    try:
        header = parse_json(prefix[8 : 8 + size], "the safetensors header")
    except PipelineError as err:
        raise ValueError(str(err)) from None
    return header.get("__metadata__") if isinstance(header, dict) else None


def read_checkpoint_spec(path: Path) -> ModelSpec:
    """A checkpoint's architecture, read from its header without loading a tensor (or torch)."""
    path = Path(path)
    try:
        with path.open("rb") as stream:
            size = int.from_bytes(stream.read(8), "little")
            prefix = size.to_bytes(8, "little") + stream.read(min(size, MAX_HEADER_BYTES))
            file_size = stream.seek(0, 2)
        return checkpoint_spec(safetensors_metadata(prefix, file_size))
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run `fashion-mlp train` first") from None
    except (OSError, ValueError) as err:
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise PipelineError(f"{path}: not a fashion-mlp checkpoint ({reason}); retrain") from None


def logits_bytes(logits: Any) -> bytes:
    """test_logits.safetensors' content: an N x 10 float32 array."""
    from safetensors.numpy import save

    return save({"logits": logits})


def read_test_logits(path: Path) -> Any:
    """The test logits `train` wrote, as a numpy array (no torch)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    path = Path(path)
    try:
        logits = load(path.read_bytes())["logits"]
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run `fashion-mlp train` first") from None
    except (SafetensorError, KeyError, ValueError) as err:
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise PipelineError(f"{path}: not test logits ({reason}); retrain the model") from None
    if logits.ndim != 2 or logits.shape[1] != NUM_CLASSES or logits.dtype.name != "float32":
        raise PipelineError(
            f"{path}: logits of shape {tuple(logits.shape)} and type {logits.dtype.name}, "
            f"expected N x {NUM_CLASSES} float32; retrain the model"
        )
    return logits


def weights_digest(path: Path) -> str:
    """SHA-256 of a checkpoint file: the identity by which MLflow runs of a model are found."""
    digest = hashlib.sha256()
    try:
        with Path(path).open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run `fashion-mlp train` first") from None
    return digest.hexdigest()


class InputSnapshot:
    """What a stage's input files (params.yaml, a config) held when it read them, to check
    right before it replaces its outputs. DVC cannot stop two runs in one workspace (`dvc exp
    run -S` rewrites params.yaml before anything runs); a stage whose inputs changed meanwhile
    would write outputs that match neither version, and DVC would record the new params beside
    them."""

    def __init__(self, *paths: Path):
        self._digests = {Path(path): _digest_or_none(Path(path)) for path in paths}

    def extended(self, *paths: Path) -> "InputSnapshot":
        """This snapshot and, as they are now, `paths`."""
        snapshot = InputSnapshot(*paths)
        snapshot._digests = {**self._digests, **snapshot._digests}
        return snapshot

    def weights_digest(self, path: Path) -> str:
        """The SHA-256 of checkpoint `path` as read into this snapshot (weights_digest's, without
        reading the file again)."""
        digest = self._digests[Path(path)]
        if digest is None:
            raise PipelineError(f"{path}: not found; run `fashion-mlp train` first")
        return digest

    def verify(self) -> None:
        for path, digest in self._digests.items():
            if _digest_or_none(path) != digest:
                raise PipelineError(
                    f"{path} changed while this stage ran (another run in this workspace?); "
                    "nothing was written. Run experiments side by side with `dvc exp run "
                    "--queue` and `dvc queue start -j N`, each in its own copy"
                )


def _digest_or_none(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def write_json(path: Path, content: dict) -> None:
    write_text_atomic(Path(path), json.dumps(content, indent=2, sort_keys=True) + "\n")
