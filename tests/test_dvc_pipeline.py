"""The real `dvc repro` in a temporary copy of the project: what runs, what is skipped.

These run the actual CLI through DVC (marker `dvc`; about three minutes in all).
"""

import copy
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from fashion_mlp.register import LEFT_ALONE, PROMOTED
from fashion_mlp.tracking.tags import MODEL_TAG
from helpers.data import (
    PROJECT_ROOT,
    project_params,
    real_data_params,
    synthetic_split,
    tiny_params,
    write_params,
    write_synthetic_raw,
)
from helpers.markers import require
from helpers.process import CLI, run, stage_env
from helpers.projects import make_project, stages_run

pytestmark = pytest.mark.dvc
# What the browser drew, for a person to look at after a run.
PLOTS_SCREENSHOT = Path("/tmp/fashion-mlp-dvc-plots.png")


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
    expected = {"download", "preprocess", "configure", "activations", "compare", "register"}
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
    import hashlib

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{reproduced / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("fashion-mlp")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(tracked.data.tags[MODEL_TAG] for tracked in runs) == ["mlp1", "mlp2"]
    lock = yaml.safe_load((reproduced / "dvc.lock").read_text())["stages"]
    (processed,) = [out for out in lock["preprocess"]["outs"] if out["path"] == "data/processed"]
    for tracked in runs:
        name = tracked.data.tags[MODEL_TAG]
        assert tracked.data.tags["dvc_stage"] == f"train@{name}"
        for key in ("train_loss", "train_acc", "lr", "epoch_seconds"):
            assert [m.step for m in client.get_metric_history(tracked.info.run_id, key)] == [1, 2]
        # test_acc per epoch, and evaluate's at the last epoch (the same number).
        test_acc = client.get_metric_history(tracked.info.run_id, "test_acc")
        assert [m.step for m in test_acc] == [1, 2, 2] and test_acc[1].value == test_acc[2].value
        weights = (reproduced / f"models/{name}/model.safetensors").read_bytes()
        assert (
            tracked.data.tags["fashion_mlp.weights_sha256"] == hashlib.sha256(weights).hexdigest()
        )
        assert {a.path for a in client.list_artifacts(tracked.info.run_id)} >= {"evaluation"}
        model = mlflow.pytorch.load_model(f"models:/{tracked.data.tags['fashion_mlp.model_id']}")
        assert model(__import__("torch").rand(3, 28, 28)).shape == (3, 10)
        # The run names its data by the digest dvc.lock holds for data/processed.
        (train_input,) = [
            i for i in tracked.inputs.dataset_inputs if i.dataset.name == "fashion-mnist-train"
        ]
        assert json.loads(train_input.dataset.source)["dvc_md5"] == processed["md5"]
    # The Models tab: one LoggedModel per trained model, named after it, evaluated.
    logged = client.search_logged_models(
        [experiment.experiment_id], order_by=[{"field_name": "name"}]
    )
    assert [model.name for model in logged] == ["mlp1", "mlp2"]
    for model in logged:
        assert {m.key for m in model.metrics if m.dataset_name == "fashion-mnist-test"} == {
            "test_acc",
            "test_loss",
        }
    metrics = json.loads(run(["dvc", "metrics", "show", "--json"], reproduced))
    shown = metrics[""]["data"]
    assert {"metrics/mlp1.json", "metrics/mlp2.json"} <= set(shown)


@pytest.mark.browser
def test_the_readme_journey_in_a_real_browser(reproduced, tmp_path):
    """README "Comparing runs in MLflow" clicked in a 1600 x 900 Chromium (Playwright), from
    the link `fashion-mlp ui` prints: the per-epoch charts of mlp1 and mlp2 on screen together,
    the compare view's test accuracy beside its name, the Models tab's test_acc column on
    screen, the champion on the registry page, and back to the runs by the experiment's name.
    Its screenshots are the README's images (tests/helpers/browser.py makes them)."""
    from helpers.browser import CHROMIUM, README_WALK, project_ui, walk_the_readme

    require(CHROMIUM.exists(), f"{CHROMIUM} not installed (apt-get install chromium)")
    with project_ui(reproduced, stage_env()) as link:
        journey = walk_the_readme(link, ["mlp1", "mlp2"], *README_WALK, tmp_path)
    # (The UI appends its own state to the URL: search filter, sort order.)
    assert link.endswith("/runs?workflowType=machine_learning") and journey.landed.startswith(link)
    assert journey.charts_in_view == {"test_acc": True, "train_acc": True}, journey
    for model in ("mlp1", "mlp2"):
        test_acc = json.loads((reproduced / f"metrics/{model}.json").read_text())["test_acc"]
        assert float(journey.compared[model]) == pytest.approx(test_acc, abs=1e-3), journey
        assert float(journey.models[model]) == pytest.approx(test_acc, abs=1e-4), journey
    assert journey.beside_its_name, "test_acc is not on screen beside its name"
    assert journey.metric_column_in_view, "the Models tab's test_acc column is off screen"
    champion = json.loads((reproduced / "reports/champion.json").read_text())
    assert "@ champion" in journey.champion and champion["model"] in journey.champion, journey
    assert journey.reopened.startswith(link), journey
    for picture in ("runs.png", "charts.png", "compare.png", "models.png", "registry.png"):
        assert (tmp_path / picture).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.browser
def test_dvc_plots_render_in_a_browser_with_the_network_cut_off(project, tmp_path):
    """`dvc plots show` writes a page that draws every plot with no network (the project's
    template inlines Vega); DVC's default page, which loads Vega from a CDN, draws nothing."""
    from dvc_render.html import PAGE_HTML

    from helpers.browser import CHROMIUM, charts_drawn_offline

    require(CHROMIUM.exists(), f"{CHROMIUM} not installed (apt-get install chromium)")
    run(["dvc", "plots", "show", "-o", "ours"], project)
    plots = 2 + 3 * 2  # loss and accuracy; per model its curve, per-class bars and confusion
    assert charts_drawn_offline(project / "ours/index.html", tmp_path / "plots.png") == plots
    shutil.copy(tmp_path / "plots.png", PLOTS_SCREENSHOT)
    (tmp_path / "cdn.html").write_text(PAGE_HTML)
    run(
        ["dvc", "plots", "show", "-o", "cdn", "--html-template", str(tmp_path / "cdn.html")],
        project,
    )
    drawn = charts_drawn_offline(project / "cdn/index.html", tmp_path / "cdn.png", 3_000)
    assert drawn == 0


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
    assert stages_run(run(["dvc", "repro"], project)) == {
        "configure",
        "train@mlp2",
        "evaluate@mlp2",
        "compare",
        "register",
    }


def test_a_shared_train_param_retrains_exactly_the_models_that_do_not_set_their_own(project):
    edit_params(project, lambda p: p["models"]["mlp2"].update(lr=0.5))
    run(["dvc", "repro"], project)
    edit_params(project, lambda p: p["train"].update(lr=0.3))
    assert stages_run(run(["dvc", "repro"], project)) == {
        "configure",
        "train@mlp1",
        "evaluate@mlp1",
        "compare",
    }


def test_a_registry_choice_reruns_register_only_and_where_runs_go_reruns_nothing(project):
    edit_params(project, lambda p: p["mlflow"].update(champion="mlp1"))
    assert stages_run(run(["dvc", "repro"], project)) == {"register"}
    champion = json.loads((project / "reports/champion.json").read_text())
    assert champion["model"] == "mlp1"
    edit_params(project, lambda p: p["mlflow"].update(experiment="elsewhere"))
    edit_params(project, lambda p: p["mlflow"].update(tracking_uri="sqlite:///other.db"))
    assert stages_run(run(["dvc", "repro"], project)) == set()


def test_a_new_models_entry_adds_its_stages_without_touching_dvc_yaml(project):
    edit_params(project, lambda p: p["models"].update(mlp3={"hidden": [48], "activation": "tanh"}))
    # register reads only the declared champion's files (mlp2 here): it does not rerun.
    assert stages_run(run(["dvc", "repro"], project)) == {
        "configure",
        "train@mlp3",
        "evaluate@mlp3",
        "compare",
    }
    report = (project / "reports/comparison.md").read_text()
    assert "| mlp3 | 784-48-10 tanh |" in report


def mlflow_runs(project: Path) -> list:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=["fashion-mlp"], output_format="list")


def weights(project: Path) -> dict[str, bytes]:
    return {m: (project / f"models/{m}/model.safetensors").read_bytes() for m in ("mlp1", "mlp2")}


def test_params_seen_before_are_restored_from_the_run_cache_without_new_mlflow_runs(project):
    first, runs_before = weights(project), len(mlflow_runs(project))
    edit_params(project, lambda p: p["train"].update(lr=0.3))
    run(["dvc", "repro"], project)
    assert len(mlflow_runs(project)) == runs_before + 2

    edit_params(project, lambda p: p["train"].update(lr=0.5))
    output = run(["dvc", "repro"], project)
    for stage in ("train@mlp1", "train@mlp2", "evaluate@mlp1", "evaluate@mlp2"):
        assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in output
    assert len(mlflow_runs(project)) == runs_before + 2
    # The restored weights are the first run's, and the first runs still describe them.
    assert weights(project) == first
    assert run(["fashion-mlp", "evaluate", "mlp1"], project).startswith("mlp1: test_acc")


def commit_all(project: Path) -> None:
    ignored = project / ".gitignore"
    kept = ignored.read_text() if ignored.exists() else ""  # DVC lists its outputs here
    ignored.write_text(kept + "/mlflow.db\n/mlflow.db.lock\n/mlartifacts/\n")
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", "baseline"], project)


def start_queue(project: Path, workers: int) -> None:
    """`dvc queue start -j N`, its output not captured: its workers are daemons that inherit
    the command's stdout, so waiting for the end of a captured output can wait for the last
    worker (one that missed its own shutdown lingered for minutes)."""
    subprocess.run(
        ["dvc", "queue", "start", "-j", str(workers)],
        cwd=project,
        env=stage_env(DVC_NO_ANALYTICS="true"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
        timeout=120,
    )


def test_experiments_queued_in_parallel_track_into_the_workspace_store(project):
    commit_all(project)
    runs_before = len(mlflow_runs(project))
    run(["dvc", "exp", "run", "--queue", "-S", "train.lr=0.3,0.4"], project)
    start_queue(project, workers=2)
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
            (tracked_run.data.tags[MODEL_TAG], tracked_run.data.params["lr"])
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
    assert stages_run(output) == {"configure", "train@mlp1", "evaluate@mlp1", "compare"}
    newest = mlflow_runs(project)[0]
    assert newest.data.tags[MODEL_TAG] == "mlp1" and newest.data.params["lr"] == "0.05"
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project))
    experiments = {exp["name"] for entry in shown for exp in entry.get("experiments") or []}
    assert newest.data.tags["dvc_exp_name"] in experiments


def test_an_experiment_leaves_the_champion_alone_until_it_is_applied(project):
    import mlflow

    commit_all(project)
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    before = client.get_model_version_by_alias("fashion-mlp", "champion")
    # mlp2 is the champion: the experiment retrains it, and its register stage runs.
    output = run(["dvc", "exp", "run", "-S", "++models.mlp2.lr=0.05"], project)
    assert "register" in stages_run(output)
    (name,) = re.findall(r"experiment (\S+): registry left alone", output)
    assert client.get_model_version_by_alias("fashion-mlp", "champion").version == before.version
    # The experiment's result is in the workspace now (a plain `dvc exp run` applies it): the
    # champion file says the registry does not hold it, and predict will not answer with the
    # registry's older champion while the workspace names another.
    champion = json.loads((project / "reports/champion.json").read_text())
    assert champion["registry"] == LEFT_ALONE
    image = project / "garment.png"
    Image.fromarray(synthetic_split(1, seed=3)[0][0]).save(image)
    refused = subprocess.run(
        [CLI, "predict", str(image)], cwd=project, env=stage_env(), capture_output=True, text=True
    )
    assert refused.returncode == 1
    assert "is not this workspace's (mlp2, sha256 " in refused.stderr
    assert refused.stderr.rstrip().endswith("or `git pull` the champion a teammate promoted")

    run(["git", "checkout", "-q", "--", "."], project)
    run(["dvc", "checkout", "-q"], project)
    run(["dvc", "exp", "apply", name], project)
    output = run(["dvc", "repro", "--force", "--single-item", "register"], project)
    assert "now points at version 2: mlp2" in output
    promoted = client.get_model_version_by_alias("fashion-mlp", "champion")
    assert client.get_run(promoted.run_id).data.params["lr"] == "0.05"
    assert json.loads((project / "reports/champion.json").read_text())["registry"] == PROMOTED
    answered = run([CLI, "predict", str(image)], project)
    assert answered.startswith("model: fashion-mlp version 2: mlp2 (run ")


def test_a_collapsed_training_warns_and_register_refuses_it_as_champion(project):
    """A training whose weight average never leaves its start ends at chance accuracy, with a
    finite loss: train warns in one line, and `dvc repro` stops at register, which registers
    nothing (mlp2 is the tiny project's champion)."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    before = client.get_model_version_by_alias("fashion-mlp", "champion")
    champion = (project / "reports/champion.json").read_bytes()
    edit_params(project, lambda params: params["models"]["mlp2"].update(ema_decay=0.999999999))
    done = subprocess.run(
        ["dvc", "repro"], cwd=project, env=stage_env(), capture_output=True, text=True
    )
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert re.search(r"warning: mlp2 ends at test accuracy 0\.1\d+, about chance", output), output
    floor = r"error: mlp2: test_acc 0\.1\d+ is below the floor 0\.2 \(params "
    assert re.search(floor + r"mlflow\.champion_min_test_acc\)", output), output
    assert client.get_model_version_by_alias("fashion-mlp", "champion").version == before.version
    assert (project / "reports/champion.json").read_bytes() == champion


# What each kind of code edit may rerun in the tiny project (models mlp1 and mlp2), as `dvc
# status` marks it: the same rule decides what `dvc repro` reruns.
TRAININGS = {"train@mlp1", "train@mlp2"}
EVALUATIONS = {"evaluate@mlp1", "evaluate@mlp2"}
# An edit appended to a module, by what it adds.
REGISTRY_EDITS = {
    "optimizers.py": 'BUILDERS["rmsprop"] = _sgd  # a new optimizer\n',
    "metrics.py": 'EVALUATION_METRICS["test_error"] = EVALUATION_METRICS["test_acc"]\n',
    "nonlinearities.py": 'TORCH_LAYERS["silu"] = "SiLU"  # a new activation\n',
    "choices.py": 'OPTIMIZERS = (*OPTIMIZERS, "rmsprop")\n',
}


def test_a_code_edit_reruns_exactly_the_stages_whose_outputs_it_can_change(project):
    """Per README "Changing code": the registries rerun what runs them, the recording layer
    (tracking/) and the vocabulary of names (choices.py) rerun nothing."""
    source = project / "src/fashion_mlp"

    def marked_after(module: str, line: str) -> set[str]:
        path = source / module
        original = path.read_text()
        path.write_text(original + "\n" + line)
        try:
            return set(json.loads(run(["dvc", "status", "--json"], project)))
        finally:
            path.write_text(original)

    expected = {
        "optimizers.py": TRAININGS,
        "metrics.py": EVALUATIONS | {"register", "compare"},
        "nonlinearities.py": TRAININGS | {"activations"},
        "choices.py": set(),
        "compare.py": {"compare"},
        "splits.py": TRAININGS | EVALUATIONS | {"preprocess"},
    }
    for module, stages in expected.items():
        for line in {"# edited\n", REGISTRY_EDITS.get(module, "# edited\n")}:
            assert marked_after(module, line) == stages, (module, line)
    for path in sorted((source / "tracking").glob("*.py")):
        assert marked_after(f"tracking/{path.name}", "# edited\n") == set(), path.name


def test_an_edit_that_leaves_a_stages_outputs_the_same_stops_the_rerun_there(project):
    """preprocess.py edited (a comment): preprocess reruns, writes byte-identical tensors, and
    nothing after it reruns. train.py edited: both models retrain to the same weights, and
    evaluation, comparison and registration stay as they are."""

    def touch(module: str) -> None:
        path = project / "src/fashion_mlp" / module
        path.write_text(path.read_text() + "\n# edited\n")

    touch("preprocess.py")
    assert stages_run(run(["dvc", "repro"], project)) == {"preprocess"}
    touch("train.py")
    assert stages_run(run(["dvc", "repro"], project)) == {"train@mlp1", "train@mlp2"}
    assert "Data and pipelines are up to date." in run(["dvc", "status"], project)


OUTPUT_FOLDERS = ("data", "configs", "models", "metrics", "evaluation", "reports")


def outputs(project: Path) -> dict[str, bytes]:
    return {
        path.relative_to(project).as_posix(): path.read_bytes()
        for folder in OUTPUT_FOLDERS
        for path in sorted((project / folder).rglob("*"))
        if path.is_file()
    }


def test_every_output_comes_out_byte_identical_from_the_same_inputs(project):
    """Every file a stage writes, rewritten by a forced rerun in another folder (its own
    MLflow store), is the same to the byte, and so is dvc.lock."""
    before, lock = outputs(project), (project / "dvc.lock").read_text()
    (project / "mlflow.db").unlink()
    run(["dvc", "repro", "--force"], project)
    after = outputs(project)
    assert sorted(after) == sorted(before)
    assert [name for name in before if before[name] != after[name]] == []
    assert (project / "dvc.lock").read_text() == lock


def test_real_data_end_to_end(tmp_path):
    """The real files through the real pipeline with a tiny budget (2 epochs)."""
    params = real_data_params(epochs=2, models=("mlp1", "mlp2"))
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
    assert (processed / "train.safetensors").stat().st_size > 47_000_000


def leaves(value, prefix: str = "") -> dict:
    """Every leaf key of a params mapping and its value, as DVC names them."""
    if isinstance(value, dict) and value:
        found = {}
        for key, inner in value.items():
            found |= leaves(inner, f"{prefix}.{key}" if prefix else key)
        return found
    return {prefix: value}


def changed_value(key: str, value, project: Path):
    """Another valid value for `key` (a checksum has none: any other one is a wrong one)."""
    if key == "data.local_dir":
        copy = project.parent / "same-files-elsewhere"
        if not copy.exists():
            shutil.copytree(value, copy)
        return str(copy)
    special = {
        "data.urls": ["http://127.0.0.1:9/unused/"],
        "train.optimizer": "adam",
        "train.lr_schedule": "cosine",
        "train.device": "cpu",
        "train.numerics": "native",
        "mlflow.experiment": "elsewhere",
        "mlflow.tracking_uri": "sqlite:///elsewhere.db",
        "mlflow.champion": "mlp1",
        "sweep.name": "other-search",
        "sweep.space.activation.choice": ["relu"],
        "sweep.space.hidden.choice": [[48]],
        "sweep.base.hidden": [48],
        "sweep.base.activation": "tanh",
    }
    if key in special:
        return special[key]
    if key.startswith("data.md5."):
        return "0" * 32
    if key.endswith((".hidden",)):
        return [24]
    if key.endswith(".activation"):
        return "tanh"
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        other = round(value * 0.9 + 0.01, 4)
        return other if other != value else round(value / 2, 4)
    if isinstance(value, list):
        return [round(item * 0.9, 4) if isinstance(item, float) else item for item in value]
    raise AssertionError(f"no other value for {key} = {value!r}")


def expected_stages(key: str, params: dict) -> set[str]:
    """What a change of `key` must rerun, from what the key means (not from dvc.yaml)."""
    section, *rest = key.split(".")
    if section == "data":
        return {"download"}  # the same files: nothing after it reruns
    # A model's config changes: it retrains, and compare (which shows every config) reruns.
    if section == "models":
        return {"configure", f"train@{rest[0]}", "compare"}
    if section == "train":
        own = [name for name, entry in params["models"].items() if rest[0] not in entry]
        sweep = params["sweep"]
        set_by_trials = set(sweep["base"]) | set(sweep["space"]) - {"variant"}
        swept = set() if rest[0] in set_by_trials else {"sweeps/dvc.yaml:sweep"}
        retrained = {f"train@{name}" for name in own}
        return {"configure", *retrained, *(["compare"] if retrained else [])} | swept
    if section == "sweep":
        return {"sweeps/dvc.yaml:sweep"}
    # The champion and its quality gate: register only; where runs go: nothing.
    return {"register"} if key.startswith("mlflow.champion") else set()


@pytest.fixture(scope="module")
def every_key_project(reproduced, tmp_path_factory) -> Path:
    """The reproduced project with an entry that sets keys of its own, the real sweep section,
    and the sweep stage's lock written (`dvc commit`) without running Ray."""
    project = Path(
        shutil.copytree(reproduced, tmp_path_factory.mktemp("keys") / "p", symlinks=True)
    )
    real_sweep = project_params()["sweep"]
    edit_params(
        project,
        lambda p: p["models"]["mlp2"].update(lr=0.3, seed=3) or p.update(sweep=real_sweep),
    )
    shutil.copytree(
        PROJECT_ROOT / "sweeps", project / "sweeps", ignore=shutil.ignore_patterns("*.lock")
    )
    run(["dvc", "repro"], project)
    reports = project / "reports/sweep"
    reports.mkdir(parents=True)
    for name in ("sweep.md", "trials.csv", "best.yaml", "curves.png"):
        (reports / name).write_text("a stand-in: the sweep's lock is all this test needs\n")
    run(["dvc", "commit", "--force", "sweeps/dvc.yaml:sweep"], project)
    return project


def test_every_leaf_key_of_params_reruns_exactly_what_reads_it(every_key_project, monkeypatch):
    """Each leaf key of params.yaml changed, one at a time, in both pipelines. The stages whose
    params changed run for real (`dvc repro`), one step at a time, and after each step
    `dvc status` names what the change reaches next; then the key is set back."""
    from dvc.exceptions import ReproductionError
    from dvc.repo import Repo

    from helpers.process import VENV_BIN

    project = every_key_project
    monkeypatch.setenv("PATH", f"{VENV_BIN}:{os.environ['PATH']}")
    monkeypatch.chdir(project)
    original = yaml.safe_load((project / "params.yaml").read_text())
    keys = leaves(original)
    assert len(keys) > 40
    wrong = {}
    with Repo(str(project)) as repo:

        def reached() -> set[str]:
            """Run what changed, step by step (a failing download counts as run); all of it."""
            seen: set[str] = set()
            while changed := set(repo.status()) - seen:
                seen |= changed
                for stage in sorted(changed & {"download", "configure"}):
                    try:
                        repo.reproduce(stage, single_item=True)
                    except ReproductionError:
                        return seen  # a wrong checksum: download ran, failed, and stops here
            return seen

        assert reached() == set(), "the project must start up to date"
        for key, value in keys.items():
            edited = copy.deepcopy(original)
            target = edited
            *parents, leaf = key.split(".")
            for part in parents:
                target = target[part]
            target[leaf] = changed_value(key, value, project)
            write_params(project / "params.yaml", edited)
            ran = reached()
            write_params(project / "params.yaml", original)
            reached()
            expected = expected_stages(key, original)
            if ran != expected:
                wrong[key] = (sorted(ran), sorted(expected))
    assert wrong == {}
