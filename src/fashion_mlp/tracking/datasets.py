"""The processed splits as MLflow dataset inputs, named by the digests DVC gives them.

A run's Datasets panel then shows what `dvc.lock` shows: each split's digest is its file's MD5 in
DVC's manifest of `data/processed`, and its source names the DVC output, the folder's `.dir`
hash and the git commit.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fashion_mlp.dataset import IMAGE_SHAPE
from fashion_mlp.splits import dvc_digests, split_path


@dataclass(frozen=True)
class TensorShape:
    dtype: str  # numpy's name, e.g. "uint8"
    shape: tuple[int, ...]  # -1 for any size


@dataclass(frozen=True)
class DatasetRecord:
    """One data input of a run: what MLflow's Datasets panel shows."""

    name: str
    digest: str
    source: dict[str, str]
    features: TensorShape
    targets: TensorShape
    profile: dict[str, Any]
    context: str  # training | validation | testing


CONTEXTS = {"train": "training", "validation": "validation", "test": "testing"}


def dataset_records(data_dir: Path, labels: Mapping[str, Any], commit: str | None) -> list:
    """The processed splits (by their labels: a tensor or an array) as MLflow dataset inputs,
    digested as DVC digests them."""
    folder_md5, file_md5s = dvc_digests(data_dir)
    return [
        DatasetRecord(
            name=f"fashion-mnist-{split}",
            digest=file_md5s[split_path(Path("."), split).name],
            source={
                "uri": split_path(data_dir, split).as_posix(),
                "dvc_out": Path(data_dir).as_posix(),
                "dvc_md5": folder_md5,
                "git_commit": commit or "unknown",
            },
            features=TensorShape("uint8", (-1, *IMAGE_SHAPE)),
            targets=TensorShape("int64", (-1,)),
            profile={"images": len(data), "classes": int(data.max()) + 1},
            context=CONTEXTS[split],
        )
        for split, data in labels.items()
    ]


def dataset_input(record: DatasetRecord) -> Any:
    import numpy as np
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.types import Schema, TensorSpec

    def schema(spec: TensorShape) -> str:
        return Schema([TensorSpec(np.dtype(spec.dtype), spec.shape)]).to_json()

    return DatasetInput(
        Dataset(
            name=record.name,
            digest=record.digest,
            source_type="dvc",
            source=json.dumps(record.source),
            schema=json.dumps(
                {
                    "mlflow_tensorspec": {
                        "features": schema(record.features),
                        "targets": schema(record.targets),
                    }
                }
            ),
            profile=json.dumps(record.profile),
        ),
        tags=[InputTag(key="mlflow.data.context", value=record.context)],
    )
