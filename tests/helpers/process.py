"""Running the real programs: the CLI as a process, DVC commands, several trainings at once."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

VENV_BIN = Path(sys.executable).parent
CLI = str(VENV_BIN / "fashion-mlp")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(
    ready: Callable[[], bool],
    what: str,
    log: Path | None,
    seconds: float = 120,
    process: subprocess.Popen | None = None,
):
    """Poll `ready` until it holds; fail with the log's tail after `seconds`, or at once if
    `process` (the program being waited for) has exited."""
    deadline = time.monotonic() + seconds
    while not ready():
        tail = log.read_text()[-3000:] if log and log.exists() else ""
        if process is not None and process.poll() is not None:
            pytest.fail(f"{what} exited with {process.returncode}:\n{tail}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not start in {seconds} s:\n{tail}")
        time.sleep(0.5)


def logged_steps(database: Path, metric: str) -> int:
    """How many steps of `metric` a SQLite store holds, read with plain sqlite3 (MLflow's own
    client would run the store's migrations, racing the process that creates it)."""
    import sqlite3

    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
            (count,) = connection.execute(
                "SELECT COUNT(*) FROM metrics WHERE key = ?", (metric,)
            ).fetchone()
    except sqlite3.Error:
        return 0  # not created yet
    return count


def responds(url: str) -> bool:
    """Whether a GET of `url` answers 200 (a server's health or ping endpoint)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def stage_env(**extra: str) -> dict[str, str]:
    """The environment a stage process gets in tests: the venv first on PATH, no DVC, MLflow or
    thread settings leaking in from outside, plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DVC_", "MLFLOW_", "FASHION_MLP_", "RAY_"))
    }
    return env | {"PATH": str(VENV_BIN) + os.pathsep + env["PATH"]} | extra


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run `command` (DVC, git, the CLI) with the venv on PATH and no DVC or MLflow variables
    but those in `env`; it must succeed. Returns stdout."""
    env = stage_env(**(env or {}), DVC_NO_ANALYTICS="true")
    env |= {
        f"GIT_{role}_{key}": value
        for role in ("AUTHOR", "COMMITTER")
        for key, value in (("NAME", "fashion-mlp tests"), ("EMAIL", "tests@example.com"))
    }
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def train_at_once(runs: list[tuple[str, str]], cwd: Path, env: dict[str, str]) -> None:
    """Start `fashion-mlp train MODEL --out-dir models/COPY` for every (MODEL, COPY) at the same
    time, as a parallel DVC queue does; each must succeed."""
    processes = [
        subprocess.Popen(
            [
                CLI,
                "train",
                model,
                "--config",
                f"configs/{model}.json",
                "--no-progress",
                "--out-dir",
                f"models/{copy}",
            ],
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


def heavy_modules_loaded(project: Any, *command: str) -> set[str]:
    """Run a CLI command in a fresh interpreter; which of torch and mlflow it imported."""
    script = (
        "import sys; from typer.testing import CliRunner; from fashion_mlp.cli import app; "
        f"result = CliRunner().invoke(app, {list(command)!r}); "
        "assert result.exit_code == 0, result.output; "
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'mlflow'})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=project.folder, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())
