"""The files stages hand to each other: their names and their one reader and writer each.

A model folder (`models/MODEL/`) holds `model.pt` (written by `model.save_checkpoint`),
`history.csv` (one row per epoch) and `run.json` (the MLflow run that trained it); a metrics
file (`metrics/MODEL.json`) holds the evaluation's headline numbers. Readers refuse a malformed
file with one line naming it, so a hand-edited or truncated file never becomes a traceback or a
wrong number. Standard library only: `compare` and `register` read these without torch.
"""

import csv
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fashion_mlp.atomic import atomic_path, write_text_atomic
from fashion_mlp.errors import PipelineError

MODEL_FILE = "model.pt"
HISTORY_FILE = "history.csv"
RUN_FILE = "run.json"
# Per-epoch metrics, in the order of history.csv's columns after `epoch`. The same keys go to
# MLflow (step = epoch), to the DVC plots and into the comparison report.
METRIC_KEYS = ("train_loss", "train_acc", "test_acc", "epoch_seconds")
HEADLINE_KEYS = ("test_acc", "test_loss")
EpochMetrics = dict[str, float]  # METRIC_KEYS, plus "epoch"


@dataclass(frozen=True)
class RunInfo:
    """Which MLflow run trained a model, and where its logged model is."""

    run_id: str
    model_uri: str


def write_run_info(model_dir: Path, info: RunInfo) -> None:
    write_text_atomic(Path(model_dir) / RUN_FILE, json.dumps(asdict(info), indent=2) + "\n")


def read_run_info(model_dir: Path) -> RunInfo:
    path = Path(model_dir) / RUN_FILE
    content = _read_json(path, "run `fashion-mlp train` first")
    try:
        return RunInfo(**{key: str(content[key]) for key in ("run_id", "model_uri")})
    except (KeyError, TypeError):
        raise PipelineError(
            f"{path}: not a run file (expected run_id and model_uri); retrain the model "
            "(`dvc repro --force train@MODEL`)"
        ) from None


def write_history(history: list[EpochMetrics], path: Path, keys: tuple[str, ...]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=["epoch", *keys], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)


def read_history(path: Path) -> list[EpochMetrics]:
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as stream:
            rows = list(csv.DictReader(stream))
        history = [
            {key: (int(v) if key == "epoch" else float(v)) for key, v in row.items()}
            for row in rows
        ]
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run `fashion-mlp train` first") from None
    except (ValueError, TypeError, UnicodeDecodeError) as err:
        raise PipelineError(f"{path}: not a history file ({err}); retrain the model") from None
    if not history or "epoch" not in history[0]:
        raise PipelineError(f"{path}: no epochs in it; retrain the model")
    return history


def write_metrics(path: Path, metrics: dict[str, float]) -> None:
    headline = {key: metrics[key] for key in HEADLINE_KEYS}
    write_text_atomic(Path(path), json.dumps(headline, indent=2) + "\n")


def read_metrics(path: Path) -> dict[str, float]:
    path = Path(path)
    content = _read_json(path, "run `dvc repro` to evaluate the model")
    try:
        metrics = {key: float(content[key]) for key in HEADLINE_KEYS}
    except (KeyError, TypeError, ValueError):
        raise PipelineError(
            f"{path}: expected numbers {', '.join(HEADLINE_KEYS)}; re-evaluate the model "
            "(`dvc repro --force evaluate@MODEL`)"
        ) from None
    if not all(math.isfinite(value) for value in metrics.values()):
        raise PipelineError(f"{path}: a metric is not a finite number; re-evaluate the model")
    return metrics


def _read_json(path: Path, missing_hint: str) -> Any:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; {missing_hint}") from None
    except IsADirectoryError:
        raise PipelineError(f"{path}: is a folder, expected a JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PipelineError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(content, dict):
        raise PipelineError(f"{path}: expected a JSON object")
    return content
