"""The evaluation metrics registry, and the metrics file (`metrics/MODEL.json`) that holds them.

Each entry is computed by `evaluate` from the trained model's test logits and goes, under its
own name, to every sink: the DVC metrics file (so `dvc metrics show` and `dvc exp show` list
it), the model's MLflow run and LoggedModel, and the comparison report. Adding a metric is one
entry in EVALUATION_METRICS. The functions take numpy arrays: no stage that reads metrics loads
torch.
"""

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fashion_mlp.documents import read_json
from fashion_mlp.errors import PipelineError

MAX_METRICS_BYTES = 100_000


@dataclass(frozen=True)
class EvaluationMetric:
    description: str
    compute: Callable[[Any, Any], float]  # (logits N x 10, labels N), numpy arrays -> value
    higher_is_better: bool


def _accuracy(logits: Any, labels: Any) -> float:
    return float((logits.argmax(axis=1) == labels).mean())


def _cross_entropy(logits: Any, labels: Any) -> float:
    """Mean negative log-softmax of the true class, in float64 (log-sum-exp, shifted)."""
    import numpy as np

    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_softmax[np.arange(len(labels)), labels].mean())


EVALUATION_METRICS: dict[str, EvaluationMetric] = {
    "test_acc": EvaluationMetric("accuracy on the test split", _accuracy, higher_is_better=True),
    "test_loss": EvaluationMetric(
        "mean cross-entropy on the test split", _cross_entropy, higher_is_better=False
    ),
}


def compute_metrics(logits: Any, labels: Any) -> dict[str, float]:
    return {name: metric.compute(logits, labels) for name, metric in EVALUATION_METRICS.items()}


def metrics_text(metrics: dict[str, float]) -> str:
    """The metrics file's content: every registered metric, in the registry's order."""
    return json.dumps({name: metrics[name] for name in EVALUATION_METRICS}, indent=2) + "\n"


def read_metrics(path: Path) -> dict[str, float]:
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path}: not found; run `dvc repro` to evaluate the model")
    content = read_json(path, MAX_METRICS_BYTES, "metrics file")
    try:
        metrics = {name: float(content[name]) for name in EVALUATION_METRICS}
    except (KeyError, TypeError, ValueError):
        raise PipelineError(
            f"{path}: expected numbers {', '.join(EVALUATION_METRICS)}; re-evaluate the model "
            "(`dvc repro --force evaluate@MODEL`)"
        ) from None
    if not all(math.isfinite(value) for value in metrics.values()):
        raise PipelineError(f"{path}: a metric is not a finite number; re-evaluate the model")
    return metrics
