"""Stage `evaluate MODEL`: test-set metrics, per-class accuracy and the confusion matrix.

Reads `models/MODEL/{model.pt,run.json}` and `data/processed/test.pt`, and params `mlflow`.
Writes `metrics/MODEL.json` (DVC metrics: test_acc and test_loss only, so `dvc exp show` stays
two columns a model) and, in `evaluation/MODEL/`, `per_class_accuracy.csv` (a DVC bar plot),
`predictions.csv` (one actual/predicted row per test image: DVC's confusion-matrix plot) and
`confusion_matrix.{csv,png}`. All of it is added to the model's training run in MLflow (the run
id comes from `run.json`, and the run must be this model's) without reopening the run, so the
run's duration stays that of its training.

    fashion-mlp evaluate mlp1 --model-dir models/mlp1 --data-dir data/processed \
        --metrics-file metrics/mlp1.json --out-dir evaluation/mlp1
"""

import re
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from fashion_mlp import tracking
from fashion_mlp.artifacts import MODEL_FILE, read_run_info, write_metrics
from fashion_mlp.atomic import atomic_path, write_text_atomic
from fashion_mlp.dataset import CLASS_NAMES, NUM_CLASSES
from fashion_mlp.model import as_inputs, load_checkpoint, predict_logits
from fashion_mlp.splits import Split, load_split
from fashion_mlp.tracking import TrackingTarget

EVALUATION_FILES = (
    "per_class_accuracy.csv",
    "predictions.csv",
    "confusion_matrix.csv",
    "confusion_matrix.png",
)


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor) -> torch.Tensor:
    """Counts[true, predicted], NUM_CLASSES x NUM_CLASSES, in one vectorised bincount."""
    flat = labels * NUM_CLASSES + predictions
    return torch.bincount(flat, minlength=NUM_CLASSES**2).reshape(NUM_CLASSES, NUM_CLASSES)


def class_slug(name: str) -> str:
    """'T-shirt/top' -> 't_shirt_top': a metric-key-safe class name."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def evaluate(
    model: torch.nn.Module, test: Split
) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """Metrics (test_acc, test_loss, per_class_acc by class name), the confusion matrix and
    each test image's predicted class."""
    logits = predict_logits(model, as_inputs(test.images))
    predicted = logits.argmax(dim=1)
    matrix = confusion_matrix(test.labels, predicted)
    per_class = matrix.diagonal().double() / matrix.sum(dim=1).clamp(min=1)
    metrics = {
        "test_acc": (matrix.diagonal().sum() / matrix.sum()).item(),
        "test_loss": F.cross_entropy(logits, test.labels).item(),
        "per_class_acc": {name: per_class[index].item() for index, name in enumerate(CLASS_NAMES)},
    }
    return metrics, matrix, predicted


def plot_confusion_matrix(matrix: torch.Tensor, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 7), layout="constrained")
    counts = matrix.numpy()
    image = ax.imshow(counts, cmap="Blues")
    threshold = counts.max() / 2
    for true in range(NUM_CLASSES):
        for predicted in range(NUM_CLASSES):
            value = counts[true, predicted]
            colour = "white" if value > threshold else "black"
            ax.text(predicted, true, str(value), ha="center", va="center", color=colour, size=8)
    ax.set_xticks(range(NUM_CLASSES), CLASS_NAMES, rotation=45, ha="right")
    ax.set_yticks(range(NUM_CLASSES), CLASS_NAMES)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="test images")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def write_evaluation(
    out_dir: Path,
    title: str,
    metrics: dict[str, Any],
    matrix: torch.Tensor,
    labels: torch.Tensor,
    predicted: torch.Tensor,
) -> list[Path]:
    """The evaluation folder's files (EVALUATION_FILES); their paths."""
    out_dir = Path(out_dir)
    rows = [",".join([CLASS_NAMES[i], *map(str, r)]) for i, r in enumerate(matrix.tolist())]
    header = "true\\predicted," + ",".join(CLASS_NAMES)
    write_text_atomic(out_dir / "confusion_matrix.csv", "\n".join([header, *rows]) + "\n")
    plot_confusion_matrix(matrix, title, out_dir / "confusion_matrix.png")
    per_class = [f"{c},{a}" for c, a in metrics["per_class_acc"].items()]
    write_text_atomic(
        out_dir / "per_class_accuracy.csv", "\n".join(["class,accuracy", *per_class]) + "\n"
    )
    pairs = zip(labels.tolist(), predicted.tolist(), strict=True)
    lines = [f"{CLASS_NAMES[a]},{CLASS_NAMES[p]}" for a, p in pairs]
    write_text_atomic(out_dir / "predictions.csv", "\n".join(["actual,predicted", *lines]) + "\n")
    return [out_dir / name for name in EVALUATION_FILES]


def evaluate_model(
    name: str,
    model_dir: Path,
    data_dir: Path,
    metrics_file: Path,
    out_dir: Path,
    target: TrackingTarget,
) -> dict[str, Any]:
    """Evaluate the saved model, write its metrics and pictures, log them to its MLflow run."""
    model, spec = load_checkpoint(Path(model_dir) / MODEL_FILE)
    run_id = read_run_info(model_dir).run_id
    test = load_split(data_dir, "test")
    # Checked before any output: a missing, deleted or foreign run stops us with nothing written.
    tracking.training_run(target, run_id, name)
    metrics, matrix, predicted = evaluate(model, test)

    title = f"{name} ({spec.describe()}): test accuracy {metrics['test_acc']:.4f}"
    written = write_evaluation(out_dir, title, metrics, matrix, test.labels, predicted)
    write_metrics(Path(metrics_file), metrics)
    flat = {"final_test_acc": metrics["test_acc"], "final_test_loss": metrics["test_loss"]}
    flat |= {f"class_acc.{class_slug(c)}": a for c, a in metrics["per_class_acc"].items()}
    try:
        tracking.log_to_run(target, run_id, flat, [Path(metrics_file), *written], "evaluation")
    except BaseException:
        # The run lacks this evaluation: leave no outputs that claim otherwise.
        for path in [Path(metrics_file), *written]:
            path.unlink(missing_ok=True)
        raise
    return metrics
