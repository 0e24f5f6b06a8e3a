"""Stage `evaluate MODEL`: the test-set metrics, per-class accuracy and the confusion matrix.

Reads `models/MODEL/test_logits.safetensors` (the trained model's logits for every test image,
written by `train`, which has the model in memory), `models/MODEL/model.safetensors` (its
architecture, and the SHA-256 that finds its MLflow run) and the test labels in
`data/processed/test.safetensors`. No torch: a metric of the registry (metrics.py) is a
function of logits and labels. Writes `metrics/MODEL.json` (the DVC metrics file) and, in
`evaluation/MODEL/`, `per_class_accuracy.csv` (a DVC bar plot), `predictions.csv` (one
actual/predicted row per test image: DVC's confusion-matrix plot), `confusion_matrix.csv` and
`confusion_matrix.png` (with each class's accuracy beside its row).

All of it goes to the MLflow run that trained these very weights (see tracking/runs.py): the
metrics under the same names, linked to the run's LoggedModel and to the test data, and the
files as artifacts. The run is not reopened, so its duration stays its training's. The outputs
are replaced only once MLflow has all of it.

    fashion-mlp evaluate mlp1 --model-dir models/mlp1 --data-dir data/processed \\
        --metrics-file metrics/mlp1.json --out-dir evaluation/mlp1
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fashion_mlp.artifacts import (
    MODEL_FILE,
    TEST_LOGITS_FILE,
    InputSnapshot,
    read_checkpoint_spec,
    read_test_logits,
)
from fashion_mlp.atomic import atomic_paths
from fashion_mlp.dataset import CLASS_NAMES, NUM_CLASSES
from fashion_mlp.errors import PipelineError
from fashion_mlp.metrics import compute_metrics, metrics_text
from fashion_mlp.splits import load_arrays, split_path
from fashion_mlp.tables import csv_text
from fashion_mlp.tracking.datasets import dataset_records
from fashion_mlp.tracking.runs import Runs

EVALUATION_FILES = (
    "per_class_accuracy.csv",
    "predictions.csv",
    "confusion_matrix.csv",
    "confusion_matrix.png",
)


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]  # the registry's metrics, by name
    per_class: dict[str, float]  # accuracy by class name
    matrix: Any  # counts[true, predicted], numpy
    predicted: Any  # each test image's predicted class, numpy


def confusion_matrix(labels: Any, predictions: Any) -> Any:
    """Counts[true, predicted], NUM_CLASSES x NUM_CLASSES, in one vectorised bincount."""
    flat = np.asarray(labels) * NUM_CLASSES + np.asarray(predictions)
    return np.bincount(flat, minlength=NUM_CLASSES**2).reshape(NUM_CLASSES, NUM_CLASSES)


def evaluate(logits: Any, labels: Any) -> Evaluation:
    predicted = logits.argmax(axis=1)
    matrix = confusion_matrix(labels, predicted)
    per_class = matrix.diagonal() / matrix.sum(axis=1).clip(min=1)
    return Evaluation(
        metrics=compute_metrics(logits, labels),
        per_class={name: float(per_class[index]) for index, name in enumerate(CLASS_NAMES)},
        matrix=matrix,
        predicted=predicted,
    )


def plot_confusion_matrix(evaluation: Evaluation, title: str, path: Path) -> None:
    from fashion_mlp.figures import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 7), layout="constrained")
    counts = evaluation.matrix
    image = ax.imshow(counts, cmap="Blues")
    threshold = counts.max() / 2
    for true in range(NUM_CLASSES):
        for predicted in range(NUM_CLASSES):
            value = counts[true, predicted]
            colour = "white" if value > threshold else "black"
            ax.text(predicted, true, str(value), ha="center", va="center", color=colour, size=8)
    rows = [f"{name}  {evaluation.per_class[name]:.3f}" for name in CLASS_NAMES]
    ax.set_xticks(range(NUM_CLASSES), CLASS_NAMES, rotation=45, ha="right")
    ax.set_yticks(range(NUM_CLASSES), rows)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class  (accuracy of the class)")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="test images")
    save_figure(fig, path)


def write_evaluation(folder: dict[str, Path], title: str, evaluation: Evaluation, labels: Any):
    """The evaluation files (EVALUATION_FILES), each at its path in `folder`."""
    header = ["true\\predicted", *CLASS_NAMES]
    matrix_rows = [
        dict(zip(header, [CLASS_NAMES[i], *row], strict=True))
        for i, row in enumerate(evaluation.matrix.tolist())
    ]
    folder["confusion_matrix.csv"].write_text(csv_text(matrix_rows, header), encoding="utf-8")
    plot_confusion_matrix(evaluation, title, folder["confusion_matrix.png"])
    per_class = [{"class": c, "accuracy": a} for c, a in evaluation.per_class.items()]
    folder["per_class_accuracy.csv"].write_text(csv_text(per_class), encoding="utf-8")
    pairs = zip(labels.tolist(), evaluation.predicted.tolist(), strict=True)
    predictions = [{"actual": CLASS_NAMES[a], "predicted": CLASS_NAMES[p]} for a, p in pairs]
    folder["predictions.csv"].write_text(csv_text(predictions), encoding="utf-8")


def evaluate_model(
    name: str,
    model_dir: Path,
    data_dir: Path,
    metrics_file: Path,
    out_dir: Path,
    runs: Runs,
) -> dict[str, float]:
    """Evaluate the trained model's test logits, write the metrics and pictures, and add them to
    its MLflow run."""
    model_file = Path(model_dir) / MODEL_FILE
    # A train of this model running meanwhile (two runs in one workspace) could replace the
    # weights between reading them and their logits.
    inputs = InputSnapshot(model_file, Path(model_dir) / TEST_LOGITS_FILE)
    spec = read_checkpoint_spec(model_file)
    digest = inputs.weights_digest(model_file)
    logits = read_test_logits(Path(model_dir) / TEST_LOGITS_FILE)
    _, labels = load_arrays(data_dir, "test")
    if len(logits) != len(labels):
        raise PipelineError(
            f"{Path(model_dir) / TEST_LOGITS_FILE}: {len(logits)} logits for the "
            f"{len(labels)} test images of {split_path(data_dir, 'test')}; retrain the model"
        )
    evaluation = evaluate(logits, labels)
    (test_record,) = dataset_records(data_dir, {"test": labels}, None)
    # The run that made these weights, before any output: without one nothing is written.
    trained = runs.trained(name, digest)
    title = f"{name} ({spec.describe()}): test accuracy {evaluation.metrics['test_acc']:.4f}"
    targets = [Path(metrics_file), *(Path(out_dir) / file for file in EVALUATION_FILES)]
    with atomic_paths(*targets) as staged:
        staged_metrics, *staged_files = staged
        staged_metrics.write_text(metrics_text(evaluation.metrics), encoding="utf-8")
        files = dict(zip(EVALUATION_FILES, staged_files, strict=True))
        write_evaluation(files, title, evaluation, labels)
        inputs.verify()
        runs.log_evaluation(trained, evaluation.metrics, test_record, staged, "evaluation")
    return evaluation.metrics
