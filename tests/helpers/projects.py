"""Small projects for tests that run the real CLI in subprocesses."""

import gzip
import re
import shutil
from pathlib import Path

import numpy as np

from fashion_mlp.artifacts import InputSnapshot
from fashion_mlp.configure import configure
from fashion_mlp.dataset import RAW_FILES
from fashion_mlp.params import load_params
from fashion_mlp.preprocess import preprocess
from helpers.data import PROJECT_ROOT, declared_params, idx_bytes, tiny_params, write_params
from helpers.process import run


def wide_project(tmp_path: Path) -> Path:
    """Data and a model big enough that torch's own layers split their sums across threads
    (and that AVX2 and AVX-512 kernels round differently): mlp1 with 1024 hidden units, batch
    norm and dropout, configured, the data preprocessed."""
    rng = np.random.default_rng(0)
    source = tmp_path / "source"
    source.mkdir()
    checksums = {}
    for split, count in (("train", 2048), ("test", 512)):
        labels = rng.integers(0, 10, count).astype(np.uint8)
        images = rng.integers(0, 256, (count, 28, 28)).astype(np.uint8)
        for kind, array in (("images", images), ("labels", labels)):
            (source / RAW_FILES[f"{split}_{kind}"]).write_bytes(gzip.compress(idx_bytes(array)))
            checksums[f"{split}_{kind}"] = "0" * 32  # preprocess reads no checksums
    params = tiny_params(source, checksums, "sqlite:///mlflow.db")
    params["train"] |= {"batch_size": 256, "lr": 0.05}
    # Measured: with 1024 hidden units torch's Linear and BatchNorm1d differ between 1 and 2
    # threads (tests/test_threads.py's control).
    params["models"]["mlp1"] = {
        "hidden": [1024],
        "activation": "relu",
        "batch_norm": True,
        "dropout": 0.1,
    }
    project = tmp_path / "project"
    project.mkdir()
    configure_models(write_params(project / "params.yaml", params), project / "configs")
    write_params(project / "params.yaml", declared_params(params, "train", "mlp1"))
    preprocess(source, project / "data/processed")
    return project


def configure_models(params_file: Path, configs_dir: Path) -> None:
    """What `fashion-mlp configure` does, in this process."""
    configure(load_params(params_file), configs_dir, InputSnapshot(params_file))


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def make_project(folder: Path, params: dict) -> Path:
    """A fresh git + DVC repo holding the project's dvc.yaml, sources and the given params."""
    folder.mkdir()
    shutil.copy(PROJECT_ROOT / "dvc.yaml", folder)
    shutil.copytree(
        PROJECT_ROOT / "src",
        folder / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
    )
    write_params(folder / "params.yaml", params)
    run(["git", "init", "-q"], folder)
    run(["dvc", "init", "-q"], folder)
    # The project's DVC settings (autostage, the offline plot page) and plot templates.
    shutil.copy(PROJECT_ROOT / ".dvc/config", folder / ".dvc/config")
    shutil.copytree(PROJECT_ROOT / ".dvc/plots", folder / ".dvc/plots")
    return folder
