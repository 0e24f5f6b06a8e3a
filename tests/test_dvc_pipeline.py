"""The real `dvc repro` in a temporary copy of the project: what runs, what is skipped.

These run the actual CLI through DVC, so they are marked slow (about two minutes in all).
"""

import json
import re
import shutil
import time
from pathlib import Path

import pytest
import yaml

from fashion_mlp.dataset import RAW_FILES
from helpers.data import (
    PROJECT_ROOT,
    REAL_DATA_DIR,
    project_params,
    tiny_params,
    write_params,
    write_synthetic_raw,
)
from helpers.markers import require
from helpers.process import run

pytestmark = pytest.mark.slow


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
    shutil.copytree(PROJECT_ROOT / ".dvc/plots", folder / ".dvc/plots")
    return folder


def edit_params(project: Path, edit) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    edit(params)
    write_params(project / "params.yaml", params)


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory) -> Path:
    """The tiny project after one full `dvc repro` (synthetic data, relative sqlite store)."""
    base = tmp_path_factory.mktemp("pipeline")
    checksums = write_synthetic_raw(base / "source")
    project = make_project(
        base / "project", tiny_params(base / "source", checksums, "sqlite:///mlflow.db")
    )
    output = run(["dvc", "repro"], project)
    expected = {"download", "preprocess", "activations", "compare", "register"}
    expected |= {
        f"{stage}@{model}" for stage in ("train", "evaluate") for model in ("mlp1", "mlp2")
    }
    assert stages_run(output) == expected
    return project


@pytest.fixture
def project(reproduced, tmp_path) -> Path:
    """A private copy of the reproduced project (DVC cache, lock file and MLflow store included)."""
    return Path(shutil.copytree(reproduced, tmp_path / "copy", symlinks=True))


def test_full_repro_tracks_both_models_in_one_store(reproduced):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{reproduced / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    runs = mlflow.search_runs(experiment_names=["fashion-mlp"], output_format="list")
    assert sorted(tracked.info.run_name for tracked in runs) == ["mlp1", "mlp2"]
    lock = yaml.safe_load((reproduced / "dvc.lock").read_text())["stages"]
    (processed,) = [out for out in lock["preprocess"]["outs"] if out["path"] == "data/processed"]
    for tracked in runs:
        name = tracked.info.run_name
        assert tracked.data.tags["dvc_stage"] == f"train@{name}"
        for key in ("train_loss", "train_acc", "test_acc", "epoch_seconds"):
            assert [m.step for m in client.get_metric_history(tracked.info.run_id, key)] == [1, 2]
        assert json.loads((reproduced / f"models/{name}/run.json").read_text())["run_id"] == (
            tracked.info.run_id
        )
        assert {a.path for a in client.list_artifacts(tracked.info.run_id)} >= {"evaluation"}
        model = mlflow.pytorch.load_model(f"runs:/{tracked.info.run_id}/model")
        assert model(__import__("torch").rand(3, 28, 28)).shape == (3, 10)
        # The run names its data by the digest dvc.lock holds for data/processed.
        (train_input,) = [
            i for i in tracked.inputs.dataset_inputs if i.dataset.name == "fashion-mnist-train"
        ]
        assert json.loads(train_input.dataset.source)["dvc_md5"] == processed["md5"]
    metrics = json.loads(run(["dvc", "metrics", "show", "--json"], reproduced))
    shown = metrics[""]["data"]
    assert {"metrics/mlp1.json", "metrics/mlp2.json"} <= set(shown)


def test_the_readme_journey_in_a_real_browser(reproduced, tmp_path):
    """Open the training runs in the MLflow UI, select mlp1 and mlp2, press Compare: the
    compare view shows each one's last test accuracy (Chromium, driven by Playwright)."""
    import mlflow

    from helpers.browser import CHROMIUM, compare_runs, mlflow_ui

    require(CHROMIUM.exists(), f"{CHROMIUM} not installed (apt-get install chromium)")
    store = reproduced / "mlflow.db"
    experiment = mlflow.MlflowClient(f"sqlite:///{store}").get_experiment_by_name("fashion-mlp")
    with mlflow_ui(store) as url:
        shown = compare_runs(url, experiment.experiment_id, ["mlp1", "mlp2"], "test_acc", tmp_path)
    for model in ("mlp1", "mlp2"):
        history = (reproduced / f"models/{model}/history.csv").read_text().splitlines()
        last_test_acc = float(history[-1].split(",")[3])
        assert float(shown[model]) == pytest.approx(last_test_acc, abs=1e-3), shown
    for picture in ("runs.png", "compare.png"):
        assert (tmp_path / picture).read_bytes()[:4] == b"\x89PNG"


def test_dvc_plots_draws_every_model_on_shared_axes_and_each_confusion_matrix(reproduced):
    shown = json.loads(run(["dvc", "plots", "show", "--json", "--split"], reproduced))["data"]

    def rows(plot_id: str) -> list[dict]:
        return shown[plot_id][0]["anchor_definitions"]["<DVC_METRIC_DATA>"]

    for plot_id in ("loss", "accuracy"):
        assert shown[plot_id][0]["content"]["encoding"]["color"]["field"] == "series"
        assert {row["model"] for row in rows(plot_id)} == {"mlp1", "mlp2"}
        assert {row["epoch"] for row in rows(plot_id)} == {"1", "2"}
    assert {row["field"] for row in rows("accuracy")} == {"train_acc", "test_acc"}
    for model in ("mlp1", "mlp2"):
        assert len(rows(f"evaluation/{model}/predictions.csv")) == 100
        assert len(rows(f"evaluation/{model}/per_class_accuracy.csv")) == 10


def test_repro_with_nothing_changed_runs_no_stage(project):
    output = run(["dvc", "repro"], project)
    assert stages_run(output) == set()
    assert "Data and pipelines are up to date." in run(["dvc", "status"], project)


def test_changing_one_models_architecture_retrains_only_that_model(project):
    edit_params(project, lambda p: p["models"]["mlp2"].update(hidden=[24, 12]))
    status = run(["dvc", "status"], project)
    assert "train@mlp2" in status
    assert "train@mlp1" not in status and "evaluate@mlp1" not in status
    assert stages_run(run(["dvc", "repro"], project)) == {
        "train@mlp2",
        "evaluate@mlp2",
        "compare",
        "register",
    }


def test_changing_a_shared_train_param_retrains_both(project):
    edit_params(project, lambda p: p["train"].update(lr=0.3))
    status = run(["dvc", "status"], project)
    assert "train@mlp1" in status and "train@mlp2" in status
    assert stages_run(run(["dvc", "repro"], project)) == {
        "train@mlp1",
        "train@mlp2",
        "evaluate@mlp1",
        "evaluate@mlp2",
        "compare",
        "register",
    }


def test_a_new_models_entry_adds_its_stages_without_touching_dvc_yaml(project):
    edit_params(project, lambda p: p["models"].update(mlp3={"hidden": [48], "activation": "tanh"}))
    # register reads only the declared champion's files (mlp2 here): it does not rerun.
    assert stages_run(run(["dvc", "repro"], project)) == {"train@mlp3", "evaluate@mlp3", "compare"}
    report = (project / "reports/comparison.md").read_text()
    assert "| mlp3 | 784-48-10 tanh |" in report


def mlflow_runs(project: Path) -> list:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=["fashion-mlp"], output_format="list")


def run_ids(project: Path) -> dict[str, str]:
    return {
        model: json.loads((project / f"models/{model}/run.json").read_text())["run_id"]
        for model in ("mlp1", "mlp2")
    }


def test_params_seen_before_are_restored_from_the_run_cache_without_new_mlflow_runs(project):
    first_ids, runs_before = run_ids(project), len(mlflow_runs(project))
    edit_params(project, lambda p: p["train"].update(lr=0.3))
    run(["dvc", "repro"], project)
    assert len(mlflow_runs(project)) == runs_before + 2

    edit_params(project, lambda p: p["train"].update(lr=0.5))
    output = run(["dvc", "repro"], project)
    for stage in ("train@mlp1", "train@mlp2", "evaluate@mlp1", "evaluate@mlp2"):
        assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in output
    assert len(mlflow_runs(project)) == runs_before + 2
    assert run_ids(project) == first_ids


def commit_all(project: Path) -> None:
    (project / ".gitignore").write_text("/mlflow.db\n/mlflow.db.lock\n/mlartifacts/\n")
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", "baseline"], project)


def test_experiments_queued_in_parallel_track_into_the_workspace_store(project):
    commit_all(project)
    runs_before = len(mlflow_runs(project))
    run(["dvc", "exp", "run", "--queue", "-S", "train.lr=0.3,0.4"], project)
    run(["dvc", "queue", "start", "-j", "2"], project)
    deadline = time.monotonic() + 600
    while re.search(r"\b(Queued|Running)\b", status := run(["dvc", "queue", "status"], project)):
        assert time.monotonic() < deadline, status
        time.sleep(2)
    assert status.count("Success") == 2, status

    # Queued experiments ran in copies under .dvc/tmp/exps, yet their runs are in our store.
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project))
    experiments = {exp["name"] for entry in shown for exp in entry.get("experiments") or []}
    runs = mlflow_runs(project)
    assert len(runs) == runs_before + 4
    tracked = {}
    for tracked_run in runs[: len(runs) - runs_before]:
        assert tracked_run.info.status == "FINISHED"
        assert len(tracked_run.data.tags["git_commit"]) == 40
        name = tracked_run.data.tags["dvc_exp_name"]
        tracked.setdefault(name, set()).add(
            (tracked_run.info.run_name, tracked_run.data.params["lr"])
        )
    assert set(tracked) == experiments
    assert sorted(tracked.values(), key=sorted) == [
        {("mlp1", "0.3"), ("mlp2", "0.3")},
        {("mlp1", "0.4"), ("mlp2", "0.4")},
    ]


def test_a_workspace_experiment_on_one_models_key_reruns_only_that_model(project):
    commit_all(project)
    # `++` adds the key: mlp1's entry has no lr of its own yet (it inherits train.lr).
    output = run(["dvc", "exp", "run", "-S", "++models.mlp1.lr=0.05"], project)
    assert stages_run(output) == {"train@mlp1", "evaluate@mlp1", "compare"}
    newest = mlflow_runs(project)[0]
    assert newest.info.run_name == "mlp1" and newest.data.params["lr"] == "0.05"
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project))
    experiments = {exp["name"] for entry in shown for exp in entry.get("experiments") or []}
    assert newest.data.tags["dvc_exp_name"] in experiments


def test_editing_a_module_reruns_exactly_the_stages_that_run_it(project):
    def touch(module: str) -> None:
        path = project / "src/fashion_mlp" / module
        path.write_text(path.read_text() + "\n# edited\n")

    def changed() -> set[str]:
        return set(json.loads(run(["dvc", "status", "--json"], project)))

    touch("compare.py")
    assert changed() == {"compare"}
    touch("artifacts.py")  # run files: read by train, evaluate, compare and register
    stages = {f"{s}@{m}" for s in ("train", "evaluate") for m in ("mlp1", "mlp2")}
    assert changed() == stages | {"compare", "register"}
    touch("splits.py")  # the processed data's reader and writer
    assert changed() == stages | {"compare", "register", "preprocess"}


def test_real_data_end_to_end(tmp_path):
    """The real files through the real pipeline with a tiny budget (2 epochs)."""
    files = [REAL_DATA_DIR / name for name in RAW_FILES.values()]
    require(
        all(path.exists() for path in files),
        f"real Fashion-MNIST not in {REAL_DATA_DIR} (apt-get install dataset-fashion-mnist)",
    )
    params = project_params()
    params["data"]["local_dir"] = str(REAL_DATA_DIR)
    params["train"]["epochs"] = 2
    params["models"] = {name: params["models"][name] for name in ("mlp1", "mlp2")}
    params["mlflow"]["champion"] = "mlp1"
    params.pop("sweep", None)
    project = make_project(tmp_path / "project", params)
    run(["dvc", "repro"], project)
    accuracy = {
        model: json.loads((project / f"metrics/{model}.json").read_text())["test_acc"]
        for model in ("mlp1", "mlp2")
    }
    # d2l's nets after two epochs of SGD at lr 0.1 (measured: 0.80 and 0.69).
    assert accuracy["mlp1"] >= 0.75
    assert accuracy["mlp2"] >= 0.6
    processed = project / "data/processed"
    assert (processed / "train.pt").stat().st_size > 47_000_000
