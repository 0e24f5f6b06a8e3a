"""evaluate and compare, run through the CLI after a real (tiny) training run."""

import json

import pandas as pd
import pytest
import torch

from fashion_mlp.dataset import CLASS_NAMES
from fashion_mlp.evaluate import confusion_matrix
from fashion_mlp.metrics import EVALUATION_METRICS
from helpers.data import PROJECT_ROOT
from helpers.process import heavy_modules_loaded


def test_confusion_matrix_matches_pandas_crosstab():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (500,), generator=generator)
    predictions = torch.randint(0, 10, (500,), generator=generator)
    reference = pd.crosstab(labels.numpy(), predictions.numpy()).reindex(
        index=range(10), columns=range(10), fill_value=0
    )
    assert confusion_matrix(labels, predictions).tolist() == reference.to_numpy().tolist()


def training_run(project, model: str):
    """The MLflow run that trained `model`'s current weights (found by their SHA-256)."""
    import hashlib

    import mlflow

    digest = hashlib.sha256((project.folder / f"models/{model}/model.safetensors").read_bytes())
    client = mlflow.MlflowClient(project.store)
    query = f"tags.`fashion_mlp.weights_sha256` = '{digest.hexdigest()}'"
    (run,) = client.search_runs(client.get_experiment_by_name("fashion-mlp").experiment_id, query)
    return run


def test_evaluate_writes_metrics_pictures_and_logs_into_the_train_run(trained):
    import mlflow

    before = training_run(trained, "mlp1").info
    trained.use_params("evaluate", "mlp1")
    result = trained.invoke("evaluate", "mlp1")
    assert result.exit_code == 0, result.output
    folder = trained.folder
    metrics = json.loads((folder / "metrics/mlp1.json").read_text())
    assert set(metrics) == set(EVALUATION_METRICS)
    per_class = pd.read_csv(folder / "evaluation/mlp1/per_class_accuracy.csv")
    assert list(per_class["class"]) == list(CLASS_NAMES)
    history = pd.read_csv(folder / "models/mlp1/history.csv")
    assert metrics["test_acc"] == pytest.approx(history["test_acc"].iloc[-1])
    matrix = pd.read_csv(folder / "evaluation/mlp1/confusion_matrix.csv", index_col=0)
    assert matrix.to_numpy().sum() == 100
    # Per-class accuracy is the confusion matrix's diagonal over its row sums.
    expected = matrix.to_numpy().diagonal() / matrix.to_numpy().sum(axis=1).clip(min=1)
    assert per_class["accuracy"].to_numpy() == pytest.approx(expected)
    # One row per test image for DVC's confusion plot, agreeing with the matrix.
    predictions = pd.read_csv(folder / "evaluation/mlp1/predictions.csv")
    assert len(predictions) == 100
    counted = pd.crosstab(predictions["actual"], predictions["predicted"])
    assert counted.loc["Trouser"].sum() == matrix.loc["Trouser"].sum()
    assert (predictions["actual"] == predictions["predicted"]).mean() == pytest.approx(
        metrics["test_acc"]
    )
    assert (folder / "evaluation/mlp1/confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert list(folder.glob("**/.*.tmp")) == []

    run = training_run(trained, "mlp1")
    # The evaluation's metrics under their own names, and no ten per-class metrics.
    assert run.data.metrics["test_acc"] == pytest.approx(metrics["test_acc"])
    assert run.data.metrics["test_loss"] == pytest.approx(metrics["test_loss"])
    assert not any(key.startswith("class_acc") for key in run.data.metrics)
    client = mlflow.MlflowClient(trained.store)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert artifacts == {
        "evaluation/mlp1.json",
        "evaluation/per_class_accuracy.csv",
        "evaluation/predictions.csv",
        "evaluation/confusion_matrix.csv",
        "evaluation/confusion_matrix.png",
    }
    # Linked to the run's LoggedModel and to the test data they were computed on.
    (logged,) = client.search_logged_models([run.info.experiment_id], filter_string="name = 'mlp1'")
    linked = {(m.key, m.dataset_name): m.value for m in logged.metrics if m.dataset_name}
    assert linked == {
        ("test_acc", "fashion-mnist-test"): pytest.approx(metrics["test_acc"]),
        ("test_loss", "fashion-mnist-test"): pytest.approx(metrics["test_loss"]),
    }
    # Evaluation did not reopen the run: its start, end and status are its training's.
    assert (run.info.start_time, run.info.end_time, run.info.status) == (
        before.start_time,
        before.end_time,
        "FINISHED",
    )


def test_a_runs_duration_is_its_training_time(trained):
    """From start to end, the run took the epochs plus the logging around them, not more."""
    import mlflow

    trained.use_params("evaluate", "mlp1")
    assert trained.invoke("evaluate", "mlp1").exit_code == 0
    run = training_run(trained, "mlp1")
    client = mlflow.MlflowClient(trained.store)
    seconds = [m.value for m in client.get_metric_history(run.info.run_id, "epoch_seconds")]
    duration = (run.info.end_time - run.info.start_time) / 1000
    logged = [m.timestamp for m in client.get_metric_history(run.info.run_id, "train_loss")]
    # The run ends after its last epoch was logged (model export and files follow it) ...
    assert run.info.end_time >= max(logged) and duration >= sum(seconds)
    # ... and evaluation's metrics were added later, outside the run's time span.
    evaluated = [m.timestamp for m in client.get_metric_history(run.info.run_id, "test_loss")]
    assert min(evaluated) >= run.info.end_time


def test_evaluate_of_weights_no_run_trained_fails_before_writing(trained):
    """Weights the store has no run for (another store's, or edited by hand): nothing written,
    one line saying how to train them into this store."""
    model_file = trained.folder / "models/mlp1/model.safetensors"
    (trained.folder / "models/mlp2/model.safetensors").replace(model_file)
    trained.use_params("evaluate", "mlp1")
    result = trained.invoke("evaluate", "mlp1")
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: no finished run of 'mlp1' with these weights (sha256 ")
    assert line.endswith("train it into this store: `dvc repro --force train@mlp1`")
    assert not (trained.folder / "metrics").exists()
    assert not (trained.folder / "evaluation").exists()


def test_evaluate_does_not_use_a_deleted_run(trained):
    import mlflow

    run_id = training_run(trained, "mlp1").info.run_id
    mlflow.MlflowClient(trained.store).delete_run(run_id)
    trained.use_params("evaluate", "mlp1")
    result = trained.invoke("evaluate", "mlp1")
    assert result.exit_code == 1
    assert f"the run that trained 'mlp1' into these weights ({run_id}) is deleted" in result.stderr
    assert not (trained.folder / "metrics").exists()


def test_compare_writes_the_table_the_curves_and_the_plot_data(evaluated):
    evaluated.use_params("compare")
    result = evaluated.invoke("compare")
    assert result.exit_code == 0, result.output
    report = (evaluated.folder / "reports/comparison.md").read_text()
    for model in ("mlp1", "mlp2"):
        metrics = json.loads((evaluated.folder / f"metrics/{model}.json").read_text())
        test_acc = f"{metrics['test_acc']:.4f}"
        assert any(
            line.startswith(f"| {model} |") and test_acc in line for line in report.splitlines()
        )
    per_epoch = report.split("## Per epoch")[1]
    assert (
        "| epoch | mlp1 train loss | mlp1 train accuracy | mlp1 test accuracy | mlp2" in per_epoch
    )
    assert len([line for line in per_epoch.splitlines() if line.startswith("| 2 |")]) == 1
    assert (evaluated.folder / "reports/learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    curves = pd.read_csv(evaluated.folder / "reports/curves.csv")
    assert list(curves.columns) == ["epoch", "model", "train_loss", "train_acc", "test_acc"]
    assert sorted(path.name for path in (evaluated.folder / "reports").iterdir()) == [
        "comparison.md",
        "curves.csv",
        "learning_curves.png",
    ]
    history = pd.read_csv(evaluated.folder / "models/mlp2/history.csv")
    mlp2 = curves[curves["model"] == "mlp2"].reset_index(drop=True)
    assert mlp2["test_acc"].tolist() == pytest.approx(history["test_acc"].tolist())


def test_compare_names_the_missing_file(trained):
    trained.use_params("compare")
    result = trained.invoke("compare")
    assert result.exit_code == 1
    assert "metrics/mlp1.json: not found; run `dvc repro`" in result.stderr


def test_compare_refuses_a_metrics_file_that_is_not_numbers(evaluated):
    (evaluated.folder / "metrics/mlp2.json").write_text('{"test_acc": "high", "test_loss": 1}')
    evaluated.use_params("compare")
    result = evaluated.invoke("compare")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: metrics/mlp2.json: expected numbers test_acc, test_loss; re-evaluate the model "
        "(`dvc repro --force evaluate@MODEL`)"
    )
    assert not (evaluated.folder / "reports").exists()


def test_compare_refreshes_the_readme_table_between_its_markers(evaluated):
    from fashion_mlp.compare import README_END, README_START

    readme = evaluated.folder / "README.md"
    readme.write_text(f"# Title\n\n{README_START}\nold table\n{README_END}\n\nMore text.\n")
    evaluated.use_params("compare")
    result = evaluated.invoke("compare", "--readme", str(readme))
    assert result.exit_code == 0, result.output
    text = readme.read_text()
    assert "old table" not in text and text.endswith("More text.\n")
    table = text.split(README_START)[1].split(README_END)[0]
    mlp1_acc = json.loads((evaluated.folder / "metrics/mlp1.json").read_text())["test_acc"]
    assert f"| mlp1 | 784-32-10 relu | sgd | 0.5000 | 2 | {mlp1_acc:.4f} |" in table


def test_compare_loads_neither_torch_nor_mlflow(evaluated):
    evaluated.use_params("compare")
    assert heavy_modules_loaded(evaluated, "compare") == set()


def test_the_d2l_figure_stands_beside_a_model_only_while_it_trains_by_the_chapters_recipe():
    import dataclasses

    from fashion_mlp.compare import d2l_reference
    from fashion_mlp.params import load_params

    params = load_params(PROJECT_ROOT / "params.yaml")
    shown = {config.name: d2l_reference(config) for config in params.run_configs()}
    assert shown["mlp1"] == 0.855 and shown["mlp2"] == 0.827
    assert {name for name, figure in shown.items() if figure is not None} == {"mlp1", "mlp2"}
    mlp2 = params.run_config("mlp2")
    for changed in ({"lr": 0.05}, {"epochs": 1}, {"momentum": 0.9}, {"augment_flip": True}):
        edited = dataclasses.replace(mlp2, train=mlp2.train.model_copy(update=changed))
        assert d2l_reference(edited) is None, changed
