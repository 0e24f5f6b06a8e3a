"""evaluate and compare, run through the CLI after a real (tiny) training run."""

import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from conftest import declared_params, evaluate, write_params
from fashion_mlp.cli import app
from fashion_mlp.evaluate import confusion_matrix
from fashion_mlp.preprocess import CLASS_NAMES


def test_confusion_matrix_matches_pandas_crosstab():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (500,), generator=generator)
    predictions = torch.randint(0, 10, (500,), generator=generator)
    reference = pd.crosstab(labels.numpy(), predictions.numpy()).reindex(
        index=range(10), columns=range(10), fill_value=0
    )
    assert confusion_matrix(labels, predictions).tolist() == reference.to_numpy().tolist()


def test_evaluate_writes_metrics_pictures_and_logs_into_the_train_run(trained, params):
    import mlflow

    result = evaluate(trained, params, "mlp1")
    assert result.exit_code == 0, result.output
    metrics = json.loads((trained / "metrics/mlp1.json").read_text())
    assert set(metrics) == {"test_acc", "test_loss"}
    per_class = pd.read_csv(trained / "evaluation/mlp1/per_class_accuracy.csv")
    assert list(per_class["class"]) == list(CLASS_NAMES)
    history = pd.read_csv(trained / "models/mlp1/history.csv")
    assert metrics["test_acc"] == pytest.approx(history["test_acc"].iloc[-1])
    matrix = pd.read_csv(trained / "evaluation/mlp1/confusion_matrix.csv", index_col=0)
    assert matrix.to_numpy().sum() == 100
    # Per-class accuracy is the confusion matrix's diagonal over its row sums.
    expected = matrix.to_numpy().diagonal() / matrix.to_numpy().sum(axis=1).clip(min=1)
    assert per_class["accuracy"].to_numpy() == pytest.approx(expected)
    assert (trained / "evaluation/mlp1/confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"

    run_id = json.loads((trained / "models/mlp1/run.json").read_text())["run_id"]
    mlflow.set_tracking_uri(params["mlflow"]["tracking_uri"])
    run = mlflow.get_run(run_id)
    assert run.data.metrics["final_test_acc"] == pytest.approx(metrics["test_acc"])
    assert "class_acc.t_shirt_top" in run.data.metrics
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "evaluation")}
    assert artifacts == {
        "evaluation/mlp1.json",
        "evaluation/per_class_accuracy.csv",
        "evaluation/confusion_matrix.csv",
        "evaluation/confusion_matrix.png",
    }
    runs = mlflow.search_runs(experiment_names=[params["mlflow"]["experiment"]])
    assert sorted(runs["tags.mlflow.runName"]) == ["mlp1", "mlp2"]


def test_evaluate_with_a_run_missing_from_the_store_fails_before_writing(trained, params):
    (trained / "models/mlp1/run.json").write_text(json.dumps({"run_id": "0" * 32}))
    result = evaluate(trained, params, "mlp1")
    assert result.exit_code == 1
    assert f"MLflow run {'0' * 32} not found" in result.stderr
    assert not (trained / "metrics").exists()


def test_compare_writes_the_table_and_the_curves(evaluated, params):
    write_params(evaluated / "params.yaml", declared_params(params, "compare"))
    result = CliRunner().invoke(app, ["compare"])
    assert result.exit_code == 0, result.output
    report = (evaluated / "reports/comparison.md").read_text()
    for model in ("mlp1", "mlp2"):
        metrics = json.loads((evaluated / f"metrics/{model}.json").read_text())
        test_acc = f"{metrics['test_acc']:.4f}"
        assert any(
            line.startswith(f"| {model} |") and test_acc in line for line in report.splitlines()
        )
    per_epoch = report.split("## Per epoch")[1]
    assert (
        "| epoch | mlp1 train loss | mlp1 train accuracy | mlp1 test accuracy | mlp2" in per_epoch
    )
    assert len([line for line in per_epoch.splitlines() if line.startswith("| 2 |")]) == 1
    assert (evaluated / "reports/learning_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_names_the_missing_file(trained, params):
    write_params(trained / "params.yaml", declared_params(params, "compare"))
    result = CliRunner().invoke(app, ["compare"])
    assert result.exit_code == 1
    assert "metrics/mlp1.json: not found; run `dvc repro`" in result.stderr


def test_compare_refreshes_the_readme_table_between_its_markers(evaluated, params):
    from fashion_mlp.compare import README_END, README_START

    readme = evaluated / "README.md"
    readme.write_text(f"# Title\n\n{README_START}\nold table\n{README_END}\n\nMore text.\n")
    write_params(evaluated / "params.yaml", declared_params(params, "compare"))
    result = CliRunner().invoke(app, ["compare", "--readme", str(readme)])
    assert result.exit_code == 0, result.output
    text = readme.read_text()
    assert "old table" not in text and text.endswith("More text.\n")
    table = text.split(README_START)[1].split(README_END)[0]
    mlp1_acc = json.loads((evaluated / "metrics/mlp1.json").read_text())["test_acc"]
    assert f"| mlp1 | 784-32-10 relu | sgd | 0.5000 | 2 | {mlp1_acc:.4f} |" in table
