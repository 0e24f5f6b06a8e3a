"""Stage `evaluate MODEL`: test-set metrics, per-class accuracy and the confusion matrix.

Reads `models/MODEL/{model.pt,run.json}` and `data/processed/test.pt`, and params `mlflow`.
Writes `metrics/MODEL.json` (DVC metrics: test_acc and test_loss only, so `dvc exp show` stays
two columns a model), `evaluation/MODEL/per_class_accuracy.csv` and
`evaluation/MODEL/confusion_matrix.{csv,png}`, and logs all of them into the model's training
run in MLflow (the run id comes from `run.json`), so one run holds curves and evaluation.

    fashion-mlp evaluate mlp1 --model-dir models/mlp1 --data-dir data/processed \
        --metrics-file metrics/mlp1.json --out-dir evaluation/mlp1
"""

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from fashion_mlp import tracking
from fashion_mlp.atomic import atomic_path, write_text_atomic
from fashion_mlp.model import NUM_CLASSES, load_checkpoint
from fashion_mlp.preprocess import CLASS_NAMES, Split, load_split
from fashion_mlp.tracking import TrackingTarget
from fashion_mlp.train import as_inputs, predict_logits, read_run_info


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor) -> torch.Tensor:
    """Counts[true, predicted], NUM_CLASSES x NUM_CLASSES, in one vectorised bincount."""
    flat = labels * NUM_CLASSES + predictions
    return torch.bincount(flat, minlength=NUM_CLASSES**2).reshape(NUM_CLASSES, NUM_CLASSES)


def class_slug(name: str) -> str:
    """'T-shirt/top' -> 't_shirt_top': a metric-key-safe class name."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def evaluate(model: torch.nn.Module, test: Split) -> tuple[dict[str, Any], torch.Tensor]:
    """Metrics (test_acc, test_loss, per_class_acc by class name) and the confusion matrix."""
    logits = predict_logits(model, as_inputs(test.images))
    matrix = confusion_matrix(test.labels, logits.argmax(dim=1))
    per_class = matrix.diagonal().double() / matrix.sum(dim=1).clamp(min=1)
    metrics = {
        "test_acc": (matrix.diagonal().sum() / matrix.sum()).item(),
        "test_loss": F.cross_entropy(logits, test.labels).item(),
        "per_class_acc": {name: per_class[index].item() for index, name in enumerate(CLASS_NAMES)},
    }
    return metrics, matrix


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


def evaluate_model(
    name: str,
    model_dir: Path,
    data_dir: Path,
    metrics_file: Path,
    out_dir: Path,
    target: TrackingTarget,
) -> dict[str, Any]:
    """Evaluate the saved model, write its metrics and pictures, log them to its MLflow run."""
    import mlflow

    model, spec = load_checkpoint(Path(model_dir) / "model.pt")
    run_id = read_run_info(model_dir)["run_id"]
    metrics, matrix = evaluate(model, load_split(data_dir, "test"))

    out_dir = Path(out_dir)
    matrix_csv = out_dir / "confusion_matrix.csv"
    matrix_png = out_dir / "confusion_matrix.png"
    per_class_csv = out_dir / "per_class_accuracy.csv"
    # Files are written inside the resumed run: a missing run stops us before any output.
    with tracking.resume_run(target, run_id):
        header = "true\\predicted," + ",".join(CLASS_NAMES)
        rows = [",".join([CLASS_NAMES[i], *map(str, r)]) for i, r in enumerate(matrix.tolist())]
        write_text_atomic(matrix_csv, "\n".join([header, *rows]) + "\n")
        title = f"{name} ({spec.describe()}): test accuracy {metrics['test_acc']:.4f}"
        plot_confusion_matrix(matrix, title, matrix_png)
        per_class = [f"{c},{a}" for c, a in metrics["per_class_acc"].items()]
        write_text_atomic(per_class_csv, "\n".join(["class,accuracy", *per_class]) + "\n")
        headline = {key: metrics[key] for key in ("test_acc", "test_loss")}
        write_text_atomic(Path(metrics_file), json.dumps(headline, indent=2) + "\n")

        flat = {"final_test_acc": metrics["test_acc"], "final_test_loss": metrics["test_loss"]}
        flat |= {f"class_acc.{class_slug(c)}": a for c, a in metrics["per_class_acc"].items()}
        tracking.log_metrics(flat)
        for artifact in (metrics_file, per_class_csv, matrix_csv, matrix_png):
            mlflow.log_artifact(str(artifact), artifact_path="evaluation")
    return metrics
