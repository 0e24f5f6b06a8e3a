"""Shared fixtures: synthetic data and tiny params under tmp_path, trained projects, servers.

Helpers (data makers, server starters, the "needs X" rule) live in tests/helpers/. Fixtures
that train are module-scoped and hand each test its own copy, so a module trains once.
"""

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fashion_mlp.numerics import apply_numerics_env

apply_numerics_env()  # before torch loads, as the CLI does

from fashion_mlp.cli import QuickExit, app

# Armed before torch and MLflow load (helpers.data loads them), as the console script is: the
# suite's process then ends without 5 s of teardown, with the status pytest gives
# (pytest_sessionfinish below; `pytest --help` and the like, which start no session, exit as usual).
QUICK_EXIT = QuickExit().arm()

from fashion_mlp.linalg import pin_numerics
from helpers.data import (
    declared_params,
    isolate,
    tiny_params,
    write_params,
    write_synthetic_raw,
)
from helpers.servers import TeamServer, mlflow_team_server, postgres_cluster

pin_numerics()


@dataclass
class Project:
    """A folder set up as a user's project: params.yaml, data/, models/, its own MLflow store."""

    folder: Path
    params: dict[str, Any]

    @property
    def store(self) -> str:
        return f"sqlite:///{self.folder / 'mlflow.db'}"

    def use_params(self, stage: str, model: str | None = None) -> None:
        """params.yaml with only what dvc.yaml declares for `stage` (and `model`), and where
        runs are recorded."""
        write_params(self.folder / "params.yaml", declared_params(self.params, stage, model))

    def configure(self) -> None:
        """configs/ for every model, as the `configure` stage writes it."""
        self.use_params("configure")
        result = self.invoke("configure")
        assert result.exit_code == 0, result.output

    def invoke(self, *args: str, env: dict[str, str] | None = None) -> Any:
        return CliRunner().invoke(app, list(args), env=env)


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
    folder = tmp_path / "work"
    folder.mkdir()
    isolate(monkeypatch, folder)
    return folder


def _train_project(folder: Path) -> Project:
    """Preprocess the synthetic data and train mlp1 and mlp2 through the CLI in `folder`."""
    from fashion_mlp.preprocess import preprocess

    checksums = write_synthetic_raw(folder.parent / "source")
    # Relative: each copy of the folder is then a project with its own store.
    project = Project(
        folder, tiny_params(folder.parent / "source", checksums, "sqlite:///mlflow.db")
    )
    preprocess(folder.parent / "source", folder / "data/processed")
    project.configure()
    for model in ("mlp1", "mlp2"):
        project.use_params("train", model)
        result = project.invoke(
            "train", model, "--config", f"configs/{model}.json", "--no-progress"
        )
        assert result.exit_code == 0, result.output
    return project


def _copy(project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    folder = Path(shutil.copytree(project.folder, tmp_path / "work", symlinks=True))
    isolate(monkeypatch, folder)
    return Project(folder, dict(project.params))


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    folder = tmp_path_factory.mktemp("trained") / "project"
    folder.mkdir()
    with pytest.MonkeyPatch.context() as monkeypatch:
        isolate(monkeypatch, folder)
        yield _train_project(folder)


@pytest.fixture
def trained(trained_once: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    """Both tiny models trained through the CLI (once per module); this test's own copy."""
    return _copy(trained_once, tmp_path, monkeypatch)


@pytest.fixture(scope="module")
def evaluated_once(trained_once: Project, tmp_path_factory: pytest.TempPathFactory):
    folder = Path(shutil.copytree(trained_once.folder, tmp_path_factory.mktemp("evaluated") / "p"))
    project = Project(folder, trained_once.params)
    with pytest.MonkeyPatch.context() as monkeypatch:
        isolate(monkeypatch, folder)
        for model in ("mlp1", "mlp2"):
            project.use_params("evaluate", model)
            result = project.invoke("evaluate", model)
            assert result.exit_code == 0, result.output
        yield project


@pytest.fixture
def evaluated(evaluated_once: Project, tmp_path: Path, monkeypatch) -> Project:
    """Both tiny models trained and evaluated (what compare and register read); a copy."""
    return _copy(evaluated_once, tmp_path, monkeypatch)


@pytest.fixture
def params_reads(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every Params a command loads during the test, to read which leaf keys it took."""
    import fashion_mlp.params as params_module

    loaded: list = []
    original = params_module.load_params

    def recording(path):
        loaded.append(original(path))
        return loaded[-1]

    monkeypatch.setattr(params_module, "load_params", recording)
    return loaded


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    with postgres_cluster() as uri:
        yield uri


@pytest.fixture(scope="session")
def team_server(postgres: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TeamServer]:
    """One authenticated MLflow server on PostgreSQL for the whole session."""
    with mlflow_team_server(postgres, tmp_path_factory.mktemp("mlflow-server")) as server:
        yield server


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    QUICK_EXIT.code = int(exitstatus)
