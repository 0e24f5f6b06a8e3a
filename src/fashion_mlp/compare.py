"""Stage `compare`: every model side by side, in a table and in one set of learning curves.

Reads every `configs/MODEL.json` (which models, their architectures and params),
`metrics/MODEL.json` and `models/MODEL/history.csv`. Writes `reports/comparison.md` (a summary
with the d2l reference beside ours, then the per-epoch table: train loss, train acc, test acc
per model), `reports/learning_curves.png` (all models on shared axes) and `reports/curves.csv`
(every model's epochs in one long table: the data of dvc.yaml's top-level `loss` and
`accuracy` plots, so `dvc plots show` and `dvc plots diff` draw all models and experiments on
shared axes). No torch: it reads JSON and CSV.

    fashion-mlp compare --configs-dir configs --models-dir models --metrics-dir metrics \
        --out-dir reports
"""

from pathlib import Path
from typing import Any

from fashion_mlp.artifacts import HISTORY_FILE, read_history, read_run_config
from fashion_mlp.atomic import atomic_paths, fill_between_markers
from fashion_mlp.epoch_metrics import EPOCH, curves
from fashion_mlp.metrics import EVALUATION_METRICS, read_metrics
from fashion_mlp.params import RunConfig
from fashion_mlp.tables import csv_text, markdown_table

# Test accuracy after 10 epochs in d2l's MLP chapter, and that chapter's recipe: a model is set
# beside the figure only if it trains exactly so (seed and device aside); dropout and batch
# norm are part of the architecture.
D2L_REFERENCE_TEST_ACC = {"784-256-10 relu": 0.855, "784-256-128-10 relu": 0.827}
D2L_RECIPE = {
    "epochs": 10,
    "batch_size": 256,
    "lr": 0.1,
    "optimizer": "sgd",
    "momentum": 0.0,
    "weight_decay": 0.0,
    "lr_schedule": "constant",
    "init_std": 0.01,
    "warmup_epochs": 0,
    "label_smoothing": 0.0,
    "ema_decay": 0.0,
    "augment_shift": 0,
    "augment_flip": False,
}
README_START = "<!-- results:start (written by `fashion-mlp compare --readme README.md`) -->"
README_END = "<!-- results:end -->"
CURVES = curves("test")
REPORT_FILES = ("comparison.md", "curves.csv", "learning_curves.png")


def read_configs(configs_dir: Path) -> list[RunConfig]:
    """Every model's config, in name order."""
    return [read_run_config(path) for path in sorted(Path(configs_dir).glob("*.json"))]


def load_results(
    configs: list[RunConfig], models_dir: Path, metrics_dir: Path
) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, float]]]]:
    """(summary: one row per model, history: each model's epochs)."""
    summary, histories = [], {}
    for config in configs:
        name, spec = config.name, config.model
        metrics = read_metrics(Path(metrics_dir) / f"{name}.json")
        histories[name] = read_history(Path(models_dir) / name / HISTORY_FILE)
        summary.append(
            {
                "model": name,
                "architecture": spec.describe(),
                "optimizer": config.train.optimizer,
                "lr": config.train.lr,
                "epochs": len(histories[name]),
                **{key: metrics[key] for key in EVALUATION_METRICS},
                "d2l_reference": d2l_reference(config),
            }
        )
    return summary, histories


def d2l_reference(config: RunConfig) -> float | None:
    """The chapter's test accuracy for this model, if it is the chapter's model and recipe."""
    recipe = {key: getattr(config.train, key) for key in D2L_RECIPE}
    return D2L_REFERENCE_TEST_ACC.get(config.model.describe()) if recipe == D2L_RECIPE else None


def epoch_table(histories: dict[str, list[dict[str, float]]]) -> list[dict[str, Any]]:
    """Wide per-epoch table: one column per model and metric, as in the d2l chapter."""
    epochs = max(len(rows) for rows in histories.values())
    table = []
    for epoch in range(1, epochs + 1):
        row: dict[str, Any] = {EPOCH: epoch}
        for model, rows in histories.items():
            for metric, label in CURVES.items():
                row[f"{model} {label}"] = rows[epoch - 1][metric] if epoch <= len(rows) else None
        table.append(row)
    return table


def comparison_report(summary: list[dict], histories: dict[str, list[dict[str, float]]]) -> str:
    return "\n".join(
        [
            "# Model comparison",
            "",
            "Test accuracy after the last epoch; the d2l reference is the chapter's figure, "
            "beside a model with the same architecture and recipe (SGD lr 0.1, batch 256, "
            "10 epochs, init normal(0, 0.01)).",
            "",
            markdown_table(summary),
            "",
            "## Per epoch",
            "",
            markdown_table(epoch_table(histories)),
            "",
        ]
    )


def plot_learning_curves(histories: dict[str, list[dict[str, float]]], path: Path) -> None:
    from fashion_mlp.figures import pyplot, save_figure

    fig, axes = pyplot().subplots(
        1, len(CURVES), figsize=(15, 4.5), sharex=True, layout="constrained"
    )
    for ax, (metric, label) in zip(axes, CURVES.items(), strict=True):
        for model, rows in histories.items():
            epochs = [row[EPOCH] for row in rows]
            ax.plot(epochs, [row[metric] for row in rows], marker="o", markersize=3, label=model)
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend()
    save_figure(fig, path)


def compare(
    configs: list[RunConfig],
    models_dir: Path,
    metrics_dir: Path,
    out_dir: Path,
    readme: Path | None = None,
) -> list[dict[str, Any]]:
    """Write the comparison report and learning curves (and the README's results table if
    `readme` is given); return the summary table."""
    summary, histories = load_results(configs, models_dir, metrics_dir)
    curves = [
        {EPOCH: row[EPOCH], "model": model, **{key: row[key] for key in CURVES}}
        for model, rows in histories.items()
        for row in rows
    ]
    out_dir = Path(out_dir)
    with atomic_paths(*(out_dir / name for name in REPORT_FILES)) as (report, table, figure):
        report.write_text(comparison_report(summary, histories), encoding="utf-8")
        table.write_text(csv_text(curves), encoding="utf-8")
        plot_learning_curves(histories, figure)
    if readme is not None:
        fill_between_markers(readme, README_START, README_END, markdown_table(summary))
    return summary
