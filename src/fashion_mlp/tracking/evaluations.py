"""An evaluation added to the training run it evaluates: the metrics, the data they were
computed on, and the files, without reopening the run (its start and end stay the training's)."""

import time
from collections.abc import Mapping
from pathlib import Path

from fashion_mlp.tracking.datasets import DatasetRecord, dataset_input
from fashion_mlp.tracking.provenance import TrainedRun
from fashion_mlp.tracking.store import Store
from fashion_mlp.tracking.tags import EVALUATED_TAG


def log_evaluation(
    store: Store,
    trained: TrainedRun,
    metrics: Mapping[str, float],
    dataset: DatasetRecord,
    files: list[Path],
    folder: str,
) -> None:
    """The metrics go in at the training's last step, linked to the run's LoggedModel and to
    `dataset`, so the Models tab lists them; the files go under `folder`."""
    from mlflow.entities import Metric

    client = store.client
    now = int(time.time() * 1000)
    batch = [
        Metric(
            key,
            float(value),
            now,
            trained.epochs,
            model_id=trained.model_id or None,
            dataset_name=dataset.name,
            dataset_digest=dataset.digest,
        )
        for key, value in metrics.items()
    ]
    client.log_inputs(trained.run_id, datasets=[dataset_input(dataset)])
    client.log_batch(trained.run_id, metrics=batch)
    for path in files:
        client.log_artifact(trained.run_id, str(path), artifact_path=folder)
    client.set_tag(trained.run_id, EVALUATED_TAG, "true")
