"""The sweep's reports, written together into `reports/sweep/` (or not at all).

    sweep.md    trials ranked, with their configurations
    trials.csv  every trial
    curves.png  every trial's validation curve (an x where the scheduler stopped it)
    best.yaml   the winner as a ready-to-paste `models` entry

Like every output here they depend on the inputs only: no run ids, nodes or seconds (MLflow
has those). With one trial at a time the scheduler's decisions, and so the reports, are the
same on every run; with several at once they depend on which trial reports first.
"""

import json
from pathlib import Path
from typing import Any

from fashion_mlp.atomic import atomic_folder
from fashion_mlp.documents import yaml_text
from fashion_mlp.epoch_metrics import EPOCH
from fashion_mlp.sweep.space import SweepParams
from fashion_mlp.sweep.trials import VAL_ACC, TrialOutcome
from fashion_mlp.tables import csv_text, markdown_table

REPORT_FILES = ("sweep.md", "trials.csv", "curves.png", "best.yaml")


def publish_reports(
    sweep: SweepParams,
    ranked: list[TrialOutcome],
    test_acc: float | None,
    trained_on: int,
    out_dir: Path,
) -> None:
    keys = sorted({key for outcome in ranked for key in outcome.plan.sampled})
    rows = [
        {
            "rank": rank,
            "trial": outcome.plan.index,
            # The value the trial trained with (a variant may have set a drawn key).
            **{key: json.dumps(outcome.plan.effective(key)) for key in keys},
            "status": outcome.status,
            "epochs": len(outcome.epochs),
            "stopped_early": outcome.stopped_early,
            VAL_ACC: round(outcome.val_acc, 4) if outcome.epochs else "",
            "error": outcome.error,
        }
        for rank, outcome in enumerate(ranked, 1)
    ]
    best = ranked[0]
    note = (
        f"# sweep {sweep.name}, trial {best.plan.index}: val_acc {best.val_acc:.4f} after "
        f"{len(best.epochs)} epochs; test_acc {test_acc:.4f} (measured once, after choosing)\n"
        if test_acc is not None
        else "# no trial finished\n"
    )
    name = f"{sweep.name}_best".replace("-", "_")
    pasted = yaml_text({"models": {name: best.plan.entry}})
    with atomic_folder(Path(out_dir)) as staging:
        (staging / "trials.csv").write_text(csv_text(rows), encoding="utf-8")
        (staging / "best.yaml").write_text(note + pasted, encoding="utf-8")
        plot_curves(ranked, sweep.scheduler.grace_period, staging / "curves.png")
        markdown = summary(sweep, ranked, rows, keys, test_acc, trained_on)
        (staging / "sweep.md").write_text(markdown, encoding="utf-8")


def summary(
    sweep: SweepParams,
    ranked: list[TrialOutcome],
    rows: list[dict[str, Any]],
    keys: list[str],
    test_acc: float | None,
    trained_on: int,
) -> str:
    best = ranked[0]
    stopped = sum(outcome.stopped_early for outcome in ranked)
    failed = sum(outcome.status == "FAILED" for outcome in ranked)
    shown = [
        row | {"status": "stopped early" if row["stopped_early"] else row["status"].lower()}
        for row in rows
    ]
    headline = (
        f"Best: trial {best.plan.index}, validation accuracy {best.val_acc:.4f}; its test "
        f"accuracy, measured once after choosing, is {test_acc:.4f}."
        if test_acc is not None
        else "No trial finished."
    )
    return "\n".join(
        [
            f"# Sweep `{sweep.name}`",
            "",
            f"{len(ranked)} trials drawn with seed {sweep.seed}; each trained on "
            f"{trained_on:,} training images and was judged on "
            f"{sweep.validation_size:,} held-out ones (never on the test set). ASHA (grace period "
            f"{sweep.scheduler.grace_period} epochs, reduction factor "
            f"{sweep.scheduler.reduction_factor:g}) stopped {stopped} early; {failed} failed.",
            "",
            headline,
            "",
            "The winner as a `models` entry: `best.yaml`. Every trial: `trials.csv`; their "
            "validation curves: `curves.png`.",
            "",
            markdown_table(shown, ["rank", "trial", *keys, "epochs", VAL_ACC, "status"]),
            "",
        ]
    )


def plot_curves(ranked: list[TrialOutcome], grace_period: int, path: Path) -> None:
    from fashion_mlp.figures import pyplot, save_figure

    fig, ax = pyplot().subplots(figsize=(9, 5.5), layout="constrained")
    for outcome in sorted(ranked, key=lambda o: o.plan.index):
        if not outcome.epochs:
            continue
        epochs = [row[EPOCH] for row in outcome.epochs]
        accuracy = [row[VAL_ACC] for row in outcome.epochs]
        style = ":" if outcome.stopped_early or outcome.status != "FINISHED" else "-"
        (line,) = ax.plot(epochs, accuracy, style, marker=".", label=f"trial {outcome.plan.index}")
        if outcome.stopped_early:
            ax.plot(epochs[-1], accuracy[-1], "x", color=line.get_color(), markersize=10)
    ax.axvline(grace_period, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Every trial's validation curve (x: stopped early by ASHA; dashed: grace period)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    save_figure(fig, path)
