"""Synthetic Fashion-MNIST-shaped data and tiny params, made by the tests themselves.

The synthetic images are learnable (each class lights up its own band of rows), so a tiny MLP
reaches high accuracy in a few epochs and tests can assert that training works.
"""

import copy
import gzip
import hashlib
import struct
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from fashion_mlp.dataset import RAW_FILES
from fashion_mlp.params import RECORDING_KEYS, ModelSpec, TrainParams

PROJECT_ROOT = Path(__file__).resolve().parents[2]
REAL_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
# Every training option at its neutral value: training as d2l's recipe has it.
NEUTRAL_OPTIONS = dict(
    warmup_epochs=0,
    label_smoothing=0.0,
    ema_decay=0.0,
    augment_shift=0,
    augment_flip=False,
)


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format (big-endian dims after a magic number)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim)
    dims = struct.pack(f">{array.ndim}I", *array.shape)
    return header + dims + array.astype(np.uint8).tobytes()


def synthetic_split(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(count, 28, 28))
    for index, label in enumerate(labels):
        images[index, 2 + 2 * label : 4 + 2 * label, :] += 180
    return images.astype(np.uint8), labels.astype(np.uint8)


def write_synthetic_raw(folder: Path, train_count: int = 300, test_count: int = 100) -> dict:
    """Write the four gzip IDX files; return the MD5s of their decompressed content."""
    folder.mkdir(parents=True, exist_ok=True)
    train_images, train_labels = synthetic_split(train_count, seed=1)
    test_images, test_labels = synthetic_split(test_count, seed=2)
    arrays = {
        "train_images": train_images,
        "train_labels": train_labels,
        "test_images": test_images,
        "test_labels": test_labels,
    }
    checksums = {}
    for role, array in arrays.items():
        content = idx_bytes(array)
        (folder / RAW_FILES[role]).write_bytes(gzip.compress(content))
        checksums[role] = hashlib.md5(content).hexdigest()
    return checksums


def project_params() -> dict[str, Any]:
    return yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())


def real_data_params(epochs: int, models: tuple[str, ...]) -> dict[str, Any]:
    """The project's params on the real Fashion-MNIST files, `epochs` epochs, only `models`;
    skipped where the files are missing (failed under CI)."""
    from helpers.markers import require

    files = [REAL_DATA_DIR / name for name in RAW_FILES.values()]
    require(
        all(path.exists() for path in files),
        f"real Fashion-MNIST not in {REAL_DATA_DIR} (apt-get install dataset-fashion-mnist)",
    )
    params = project_params()
    params["data"]["local_dir"] = str(REAL_DATA_DIR)
    params["train"]["epochs"] = epochs
    params["models"] = {name: params["models"][name] for name in models}
    return params


def tiny_params(raw_source: Path, checksums: dict, tracking_uri: str) -> dict[str, Any]:
    """The real params.yaml, shrunk: synthetic data, no URLs, 2 epochs, narrow layers."""
    params = project_params()
    params["data"] = {"local_dir": str(raw_source), "urls": [], "md5": checksums}
    # init_std 0.1: both tiny nets learn the synthetic bands in 2 epochs (at 0.01 the deeper one
    # stays at chance, which `register` refuses).
    params["train"] |= {"epochs": 2, "batch_size": 32, "lr": 0.5, "init_std": 0.1}
    params["models"] = {
        "mlp1": {"hidden": [32], "activation": "relu"},
        "mlp2": {"hidden": [32, 16], "activation": "relu"},
    }
    # Two epochs on 300 images: a slow learning rate ends near 0.3, a collapse at 0.1.
    params["mlflow"] |= {
        "tracking_uri": tracking_uri,
        "champion": "mlp2",
        "champion_min_test_acc": 0.2,
    }
    params.pop("sweep", None)
    return params


def spec(hidden=(32,), activation="relu", dropout=0.0, batch_norm=False) -> ModelSpec:
    """A ModelSpec for unit tests: one narrow ReLU layer, no dropout or batch norm."""
    return ModelSpec(
        hidden=list(hidden), activation=activation, dropout=dropout, batch_norm=batch_norm
    )


def train_params(**overrides) -> TrainParams:
    """Valid TrainParams for unit tests: small, CPU, seed 0, options neutral; override any key."""
    values = dict(
        epochs=3,
        batch_size=32,
        lr=0.5,
        optimizer="sgd",
        momentum=0.0,
        weight_decay=0.0,
        lr_schedule="constant",
        init_std=0.01,
        seed=0,
        device="cpu",
        numerics="portable",
        **NEUTRAL_OPTIONS,
    )
    return TrainParams(**(values | overrides))


def write_params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def dvc_stages() -> dict[str, Any]:
    return yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]


def declared_params(params: dict, stage: str, model: str | None = None) -> dict:
    """Only the params that dvc.yaml declares for `stage` (for `model`, in foreach stages),
    plus where runs are recorded (params.RECORDING_KEYS, which no stage declares).

    Stages run in tests get these, so a stage that reads an undeclared key (which DVC would not
    track) fails its test.
    """
    pipeline = dvc_stages()[stage]
    keys = [*pipeline.get("do", pipeline).get("params", []), *RECORDING_KEYS]
    subset: dict = {}
    for key in keys:
        path = key.replace("${key}", model or "").split(".")
        source, target = params, subset
        for part in path[:-1]:
            source = source[part]
            target = target.setdefault(part, {})
        target[path[-1]] = copy.deepcopy(source[path[-1]])
    return subset


def declared_leaves(pipeline: Path, stage: str, params: dict, model: str | None = None) -> set:
    """The leaf keys of `params` that a stage of `pipeline` declares (a section declared whole
    stands for every leaf under it), as DVC names them: `train.lr`, `data.urls`."""
    definition = yaml.safe_load(Path(pipeline).read_text())["stages"][stage]
    declared = definition.get("do", definition).get("params", [])
    leaves = set()
    for key in declared:
        if isinstance(key, dict):
            continue  # another params file's keys
        key = key.replace("${key}", model or "")
        value = params
        for part in key.split("."):
            value = value[part]
        leaves |= set(_leaves(key, value))
    return leaves


def _leaves(prefix: str, value: Any) -> list[str]:
    if isinstance(value, dict) and value:
        return [leaf for key, inner in value.items() for leaf in _leaves(f"{prefix}.{key}", inner)]
    return [prefix]


def sweep_section(*variants: dict, **changes) -> dict:
    """A two-trial sweep over the tiny data: lr and width drawn, `variants` as a grid."""
    section = {
        "name": "tiny-search",
        "trials": 2,
        "seed": 0,
        "validation_size": 100,
        "max_concurrent_trials": 1,
        "cpus_per_trial": 1,
        "scheduler": {"grace_period": 1, "reduction_factor": 2},
        "base": {"hidden": [32], "activation": "relu", "epochs": 4},
        "space": {
            "lr": {"loguniform": [0.2, 0.6]},
            "hidden": {"choice": [[32], [48]]},
            # Grid points run in order: good ones first, so ASHA has a yardstick for the bad.
            "variant": {"grid": list(variants or [{}, {"lr": 1e-6}])},
        },
    }
    return section | changes


def isolate(monkeypatch, folder: Path) -> None:
    """Run in `folder`, with no tracking, DVC, thread or Ray settings leaking in from outside;
    trainings register in a private core registry."""
    import os

    monkeypatch.chdir(folder)
    for variable in list(os.environ):
        if variable.startswith(("MLFLOW_", "DVC_", "FASHION_MLP_", "RAY_ADDRESS")):
            monkeypatch.delenv(variable)
    monkeypatch.setenv("FASHION_MLP_CORE_REGISTRY", str(folder.parent / "cores"))
