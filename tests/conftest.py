"""Shared fixtures: synthetic Fashion-MNIST-shaped data and tiny params, all under tmp_path.

The synthetic images are learnable (each class lights up its own band of rows), so a tiny MLP
reaches high accuracy in a few epochs and tests can assert that training works.
"""

import copy
import gzip
import hashlib
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from fashion_mlp.download import RAW_FILES
from fashion_mlp.params import TrainParams

PROJECT_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
CLI = str(VENV_BIN / "fashion-mlp")
REAL_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")


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


def tiny_params(raw_source: Path, checksums: dict, tracking_uri: str) -> dict[str, Any]:
    """The real params.yaml, shrunk: synthetic data, no URLs, 2 epochs, narrow layers."""
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["data"] = {"local_dir": str(raw_source), "urls": [], "md5": checksums}
    params["train"] |= {"epochs": 2, "batch_size": 32, "lr": 0.5}
    params["models"] = {
        "mlp1": {"hidden": [32], "activation": "relu"},
        "mlp2": {"hidden": [32, 16], "activation": "relu"},
    }
    params["mlflow"]["tracking_uri"] = tracking_uri
    return params


def train_params(**overrides) -> TrainParams:
    """Valid TrainParams for unit tests: small, CPU, seed 0; override any key."""
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
    )
    return TrainParams(**(values | overrides))


def write_params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def declared_params(params: dict, stage: str, model: str | None = None) -> dict:
    """Only the params that dvc.yaml declares for `stage` (for `model`, in foreach stages).

    Stages run in tests get these, so a stage that reads an undeclared key (which DVC would not
    track) fails its test.
    """
    pipeline = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"][stage]
    keys = pipeline.get("do", pipeline).get("params", [])
    subset: dict = {}
    for key in keys:
        path = key.replace("${key}", model or "").split(".")
        source, target = params, subset
        for part in path[:-1]:
            source = source[part]
            target = target.setdefault(part, {})
        target[path[-1]] = copy.deepcopy(source[path[-1]])
    return subset


@pytest.fixture
def synthetic_raw(tmp_path: Path) -> tuple[Path, dict]:
    folder = tmp_path / "source"
    return folder, write_synthetic_raw(folder)


@pytest.fixture
def params(tmp_path: Path, synthetic_raw: tuple[Path, dict]) -> dict:
    folder, checksums = synthetic_raw
    return tiny_params(folder, checksums, f"sqlite:///{tmp_path / 'mlflow.db'}")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in a fresh folder, with no tracking or DVC variables leaking in from outside."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    for variable in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME"):
        monkeypatch.delenv(variable, raising=False)
    return folder


@pytest.fixture
def trained(workdir, params):
    """Both tiny models trained through the CLI, each with only its declared params."""
    from typer.testing import CliRunner

    from fashion_mlp.cli import app
    from fashion_mlp.preprocess import preprocess

    preprocess(params["data"]["local_dir"], workdir / "data/processed")
    for model in ("mlp1", "mlp2"):
        write_params(workdir / "params.yaml", declared_params(params, "train", model))
        result = CliRunner().invoke(app, ["train", model, "--no-progress"])
        assert result.exit_code == 0, result.output
    return workdir


@pytest.fixture
def evaluated(trained, params):
    """Both tiny models trained and evaluated through the CLI (what compare and register read)."""
    for model in ("mlp1", "mlp2"):
        result = evaluate(trained, params, model)
        assert result.exit_code == 0, result.output
    return trained


def evaluate(workdir: Path, params: dict, model: str):
    """Run `fashion-mlp evaluate MODEL` with only its declared params; return the result."""
    from typer.testing import CliRunner

    from fashion_mlp.cli import app

    write_params(workdir / "params.yaml", declared_params(params, "evaluate", model))
    return CliRunner().invoke(app, ["evaluate", model])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stage_env(**extra: str) -> dict[str, str]:
    """The environment a stage process gets in tests: the venv first on PATH, no DVC or MLflow
    variables leaking in from outside, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_"))}
    return env | {"PATH": str(VENV_BIN) + os.pathsep + env["PATH"]} | extra


def train_at_once(runs: list[tuple[str, str]], cwd: Path, env: dict[str, str]) -> None:
    """Start `fashion-mlp train MODEL --out-dir models/COPY` for every (MODEL, COPY) at the same
    time, as a parallel DVC queue does; each must succeed."""
    processes = [
        subprocess.Popen(
            [CLI, "train", model, "--no-progress", "--out-dir", f"models/{copy}"],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for model, copy in runs
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr


def real_data_or_skip() -> Path:
    """The real files, or a skip with the reason; under CI a missing source is a failure."""
    if all((REAL_DATA_DIR / name).exists() for name in RAW_FILES.values()):
        return REAL_DATA_DIR
    reason = f"real Fashion-MNIST not in {REAL_DATA_DIR} (apt-get install dataset-fashion-mnist)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the real-data test: {reason}")
    pytest.skip(reason)
