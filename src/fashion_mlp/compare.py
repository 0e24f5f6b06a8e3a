"""Stage `compare`: every model side by side, in a table and in one set of learning curves.

Reads params `train` and `models` (which models, and their architectures), `metrics/MODEL.json`
and `models/MODEL/history.csv` for each. Writes `reports/comparison.md` (a summary with the d2l
reference beside ours, then the per-epoch table: train loss, train acc, test acc per model),
`reports/learning_curves.png` (all models on shared axes) and `reports/curves.csv` (every
model's epochs in one long table: the data of dvc.yaml's top-level `loss` and `accuracy` plots,
so `dvc plots show` and `dvc plots diff` draw all models and experiments on shared axes).
No torch: it reads CSV and JSON.

    fashion-mlp compare --models-dir models --metrics-dir metrics --out-dir reports
"""

from pathlib import Path

import pandas as pd

from fashion_mlp.artifacts import HISTORY_FILE, read_history, read_metrics
from fashion_mlp.atomic import atomic_path, fill_between_markers, write_text_atomic
from fashion_mlp.params import RunConfig

# Test accuracy after 10 epochs in d2l's MLP chapter (SGD lr 0.1, batch 256, normal(0, 0.01)).
D2L_REFERENCE_TEST_ACC = {"784-256-10 relu": 0.855, "784-256-128-10 relu": 0.827}
README_START = "<!-- results:start (written by `fashion-mlp compare --readme README.md`) -->"
README_END = "<!-- results:end -->"
CURVES = {"train_loss": "train loss", "train_acc": "train accuracy", "test_acc": "test accuracy"}


def load_results(
    configs: list[RunConfig], models_dir: Path, metrics_dir: Path
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary: one row per model, history: one row per model and epoch)."""
    summaries, histories = [], []
    for config in configs:
        name, spec = config.name, config.model
        metrics = read_metrics(Path(metrics_dir) / f"{name}.json")
        history = pd.DataFrame(read_history(Path(models_dir) / name / HISTORY_FILE))
        histories.append(history.assign(model=name))
        summaries.append(
            {
                "model": name,
                "architecture": spec.describe(),
                "optimizer": config.train.optimizer,
                "lr": config.train.lr,
                "epochs": int(history["epoch"].max()),
                "test_acc": metrics["test_acc"],
                "test_loss": metrics["test_loss"],
                "d2l_reference": D2L_REFERENCE_TEST_ACC.get(spec.describe()),
                "seconds_per_epoch": history["epoch_seconds"].median(),
            }
        )
    return pd.DataFrame(summaries), pd.concat(histories, ignore_index=True)


def markdown_table(frame: pd.DataFrame) -> str:
    def cell(value: object) -> str:
        if value is None or (isinstance(value, float) and pd.isna(value)):
            return "-"
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |"]
    lines.append("|" + "---|" * len(frame.columns))
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join(lines)


def epoch_table(history: pd.DataFrame) -> pd.DataFrame:
    """Wide per-epoch table: one column per model and metric, as in the d2l chapter."""
    wide = history.pivot(index="epoch", columns="model", values=list(CURVES))
    models = list(dict.fromkeys(history["model"]))
    columns = [(metric, model) for model in models for metric in CURVES]
    table = wide[columns]
    table.columns = [f"{model} {CURVES[metric]}" for metric, model in columns]
    return table.reset_index()


def comparison_report(summary: pd.DataFrame, history: pd.DataFrame) -> str:
    return "\n".join(
        [
            "# Model comparison",
            "",
            "Test accuracy after the last epoch; the d2l reference is the chapter's figure for "
            "the same architecture (SGD lr 0.1, batch 256, 10 epochs).",
            "",
            markdown_table(summary),
            "",
            "## Per epoch",
            "",
            markdown_table(epoch_table(history)),
            "",
        ]
    )


def plot_learning_curves(history: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVES), figsize=(15, 4.5), sharex=True, layout="constrained")
    for ax, (metric, label) in zip(axes, CURVES.items(), strict=True):
        for model, rows in history.groupby("model", sort=False):
            ax.plot(rows["epoch"], rows[metric], marker="o", markersize=3, label=model)
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def update_readme(readme: Path, summary: pd.DataFrame) -> None:
    """Replace the README's results table (between the markers) with `summary`."""
    table = markdown_table(summary.drop(columns=["seconds_per_epoch"]))
    fill_between_markers(readme, README_START, README_END, table)


def compare(
    configs: list[RunConfig],
    models_dir: Path,
    metrics_dir: Path,
    out_dir: Path,
    readme: Path | None = None,
) -> pd.DataFrame:
    """Write the comparison report and learning curves (and the README's results table if
    `readme` is given); return the summary table."""
    summary, history = load_results(configs, models_dir, metrics_dir)
    out_dir = Path(out_dir)
    plot_learning_curves(history, out_dir / "learning_curves.png")
    columns = ["epoch", "model", *CURVES]
    write_text_atomic(out_dir / "curves.csv", history[columns].to_csv(index=False))
    write_text_atomic(out_dir / "comparison.md", comparison_report(summary, history))
    if readme is not None:
        update_readme(readme, summary)
    return summary
