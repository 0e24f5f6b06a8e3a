"""Benchmarks of parallel work (issues 9 and 10), called by run.py; each returns report lines and
targets. They run real commands in temporary copies of the project, one measurement at a time.

1. Two trainings at once vs one after the other, with the thread policy and with the old
   default (every process taking all cores).
2. Two queued DVC experiments (every model at 1 epoch) with `dvc queue start -j 2` vs `-j 1`.
3. The edit loop: one d2l model given an lr the run-cache never saw, `dvc repro
   --no-run-cache`, against that model's epoch seconds.
4. `dvc repro --force` of the default pipeline: wall time vs the sum of its training epochs,
   and each stage's fixed cost.
5. The same grid of 8 configurations as a Ray sweep vs as 8 queued DVC experiments (-j 2).
6. ASHA vs the full grid on those 8: trials finished per minute, best validation accuracy.
"""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
Target = tuple[str, str, bool]  # what, measured, met
# The 8 configurations of the Ray-vs-queue comparison: d2l-sized nets, 6 epochs each.
GRID = [
    {"hidden": hidden, "lr": lr}
    for hidden in ([256], [512], [256, 128], [512, 256])
    for lr in (0.05, 0.2)
]
GRID_EPOCHS = 6


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_", "RAY_"))}
    return env | {"PATH": f"{BIN}{os.pathsep}{env['PATH']}", "DVC_NO_ANALYTICS": "true"} | extra


def run(command: list[str], cwd: Path, **extra: str) -> str:
    done = subprocess.run(
        command, cwd=cwd, env=environment(**extra), capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
        )
    return done.stdout


def timed(function: Any) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


@contextmanager
def project_copy(params: dict[str, Any] | None = None) -> Iterator[Path]:
    """A git + DVC copy of the project with the processed data in place and committed."""
    with tempfile.TemporaryDirectory(prefix="fashion-mlp-bench-") as folder:
        project = Path(folder) / "project"
        project.mkdir()
        for name in ("dvc.yaml", "params.yaml"):
            shutil.copy(ROOT / name, project / name)
        shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__"))
        if params is not None:
            (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        (project / ".gitignore").write_text("/mlflow.db\n/mlflow.db.lock\n/mlartifacts/\n")
        run(["git", "init", "-q"], project)
        run(["dvc", "init", "-q"], project)
        shutil.copy(ROOT / ".dvc/config", project / ".dvc/config")
        shutil.copytree(ROOT / ".dvc/plots", project / ".dvc/plots")
        run(["dvc", "repro", "-q", "preprocess"], project)
        run(["git", "add", "-A"], project)
        run(["git", "commit", "-q", "-m", "bench baseline"], project, **git_identity())
        yield project


def git_identity() -> dict[str, str]:
    return {
        f"GIT_{role}_{key}": value
        for role in ("AUTHOR", "COMMITTER")
        for key, value in (("NAME", "bench"), ("EMAIL", "bench@example.com"))
    }


def train_command(out: Path) -> list[str]:
    return [
        str(BIN / "fashion-mlp"),
        "train",
        "mlp1",
        "--no-tracking",
        "--no-progress",
        "--out-dir",
        str(out),
    ]


def two_trainings(repeats: int) -> tuple[list[str], list[Target]]:
    """`fashion-mlp train mlp1` twice: one after the other, both at once with the thread policy,
    both at once with one thread each (the best fixed split for two), and both at once with every
    process taking all cores (the old default, FASHION_MLP_THREADS = the core count)."""
    cores = str(len(os.sched_getaffinity(0)))
    seconds: dict[str, list[float]] = {
        "sequential": [],
        "policy": [],
        "one-thread": [],
        "all-cores": [],
    }
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)

        def at_once(**extra: str) -> None:
            processes = [
                subprocess.Popen(
                    train_command(out / name),
                    cwd=ROOT,
                    env=environment(**extra),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for name in ("a", "b")
            ]
            assert all(process.wait() == 0 for process in processes)

        for round_ in range(repeats):
            log(f"two trainings, round {round_ + 1}/{repeats}")
            seconds["sequential"].append(
                timed(lambda: [run(train_command(out / n), ROOT) for n in ("a", "b")])
            )
            seconds["policy"].append(timed(at_once))
            seconds["one-thread"].append(timed(lambda: at_once(FASHION_MLP_THREADS="1")))
            seconds["all-cores"].append(timed(lambda: at_once(FASHION_MLP_THREADS=cores)))
    median = {key: sorted(values)[len(values) // 2] for key, values in seconds.items()}
    ratio = median["policy"] / median["sequential"]
    fixed = median["one-thread"] / median["sequential"]
    old = median["all-cores"] / median["sequential"]
    lines = [
        "## Two trainings: wall seconds (`fashion-mlp train mlp1 --no-tracking`, 10 epochs)",
        "",
        "| how | seconds | / one after the other |",
        "|---|---|---|",
        f"| one after the other | {cell(seconds['sequential'])} | 1.00 |",
        f"| both at once, thread policy (fair share) | {cell(seconds['policy'])} | {ratio:.2f} |",
        f"| both at once, 1 thread each (`FASHION_MLP_THREADS=1`) | {cell(seconds['one-thread'])} "
        f"| {fixed:.2f} |",
        f"| both at once, each taking all {cores} cores | {cell(seconds['all-cores'])} "
        f"| {old:.2f} |",
    ]
    return lines, [
        ("two trainings at once / one after the other <= 0.6", f"{ratio:.2f}", ratio <= 0.6)
    ]


def cell(values: list[float]) -> str:
    ordered = sorted(values)
    return f"{ordered[len(ordered) // 2]:.1f} [{ordered[0]:.1f}-{ordered[-1]:.1f}]"


def queued_experiments() -> tuple[list[str], list[Target]]:
    """Two queued experiments (every model at 1 epoch), run with -j 1 and with -j 2."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    # One epoch for every model, so warm-up must end by then too.
    overrides = ["-S", "train.epochs=1", "-S", "train.warmup_epochs=0"] + [
        item
        for name, entry in params["models"].items()
        for key, value in (("epochs", 1), ("warmup_epochs", 0))
        if key in entry
        for item in ("-S", f"models.{name}.{key}={value}")
    ]
    seconds = {}
    for jobs in (1, 2):
        with project_copy() as project:
            for seed in (1, 2):
                run(
                    ["dvc", "exp", "run", "--queue", *overrides, "-S", f"train.seed={seed}"],
                    project,
                )
            log(f"two queued experiments with dvc queue start -j {jobs}")
            started = time.perf_counter()
            run(["dvc", "queue", "start", "-j", str(jobs)], project)
            while re.search(r"\b(Queued|Running)\b", run(["dvc", "queue", "status"], project)):
                time.sleep(1)
            seconds[jobs] = time.perf_counter() - started
            status = run(["dvc", "queue", "status"], project)
            if status.count("Success") != 2:
                raise RuntimeError(f"queued experiments failed:\n{status}")
    ratio = seconds[2] / seconds[1]
    lines = [
        "## Two queued experiments (every model at 1 epoch): wall seconds",
        "",
        "| `dvc queue start` | seconds | / -j 1 |",
        "|---|---|---|",
        f"| -j 1 | {seconds[1]:.1f} | 1.00 |",
        f"| -j 2 | {seconds[2]:.1f} | {ratio:.2f} |",
    ]
    return lines, [("queued experiments -j 2 / -j 1 <= 0.8", f"{ratio:.2f}", ratio <= 0.8)]


def forced_repro() -> tuple[list[str], list[Target]]:
    """`dvc repro --force` of the default pipeline, its wall time against its epochs, and the
    fixed cost of each stage (its wall time minus its epochs)."""
    with project_copy() as project:
        log("dvc repro --force of the default pipeline (minutes)")
        stage_seconds = {}
        started = time.perf_counter()
        process = subprocess.Popen(
            ["dvc", "repro", "--force"],
            cwd=project,
            env=environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        current, since = None, time.perf_counter()
        for line in process.stdout:
            found = re.match(r"Running stage '([^']+)'", line)
            if found:
                now = time.perf_counter()
                if current:
                    stage_seconds[current] = now - since
                current, since = found.group(1), now
        if process.wait() != 0:
            raise RuntimeError("dvc repro --force failed")
        wall = time.perf_counter() - started
        if current:
            stage_seconds[current] = time.perf_counter() - since
        epochs = logged_epoch_seconds(project)
    total_epochs = sum(epochs.values())
    ratio = wall / total_epochs
    lines = [
        "## `dvc repro --force` of the default pipeline",
        "",
        f"Wall {wall:.0f} s; training epochs {total_epochs:.0f} s "
        f"({', '.join(f'{m} {s:.0f}' for m, s in epochs.items())}); ratio {ratio:.2f}.",
        "",
        "| stage | wall seconds | of which epochs | fixed cost |",
        "|---|---|---|---|",
    ]
    for stage, seconds in stage_seconds.items():
        trained = epochs.get(stage.removeprefix("train@"), 0.0) if stage.startswith("train@") else 0
        lines.append(f"| {stage} | {seconds:.1f} | {trained:.1f} | {seconds - trained:.1f} |")
    return lines, [
        ("`dvc repro --force` wall / its training epochs <= 1.6", f"{ratio:.2f}", ratio <= 1.6)
    ]


def logged_epoch_seconds(project: Path) -> dict[str, float]:
    """Each model's epoch seconds in its newest training run (MLflow keeps them; no file does)."""
    import mlflow

    from fashion_mlp.params import load_params
    from fashion_mlp.tracking.tags import MODEL_TAG, STAGE_TAG
    from fashion_mlp.train import TRAIN_STAGE

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment_name = load_params(project / "params.yaml").tracking.experiment
    experiment = client.get_experiment_by_name(experiment_name)
    seconds: dict[str, float] = {}
    for found in client.search_runs(
        [experiment.experiment_id],
        f"tags.`{STAGE_TAG}` = '{TRAIN_STAGE}'",
        order_by=["attributes.start_time DESC"],
    ):
        name = found.data.tags[MODEL_TAG]
        if name not in seconds:
            history = client.get_metric_history(found.info.run_id, "epoch_seconds")
            seconds[name] = sum(metric.value for metric in history)
    return seconds


def edit_loop(repeats: int) -> tuple[list[str], list[Target]]:
    """The thing users do most: give one d2l model (mlp2) a learning rate the run-cache never
    saw and run `dvc repro --no-run-cache`. Its wall time against that model's epoch seconds
    as its run logged them, and against the same epochs trained alone (`--no-tracking`)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["models"] = {name: params["models"][name] for name in ("mlp1", "mlp2")}
    params["mlflow"]["champion"] = "mlp1"
    walls, logged, alone, stages = [], [], [], set()
    with project_copy(params) as project:
        log("edit loop: the first dvc repro of mlp1 and mlp2")
        run(["dvc", "repro", "-q"], project)
        for attempt in range(repeats):
            log(f"edit loop {attempt + 1}/{repeats}: a new lr for mlp2, dvc repro --no-run-cache")
            params["models"]["mlp2"]["lr"] = round(0.09 + 0.001 * attempt, 4)
            (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            started = time.perf_counter()
            output = run(["dvc", "repro", "--no-run-cache"], project)
            walls.append(time.perf_counter() - started)
            stages |= set(re.findall(r"Running stage '([^']+)'", output))
            logged.append(logged_epoch_seconds(project)["mlp2"])
            alone.append(
                timed(
                    lambda: run(
                        [
                            str(BIN / "fashion-mlp"),
                            "train",
                            "mlp2",
                            "--no-tracking",
                            "--no-progress",
                            "--out-dir",
                            str(project / "alone"),
                        ],
                        project,
                    )
                )
            )
    wall, epochs = sorted(walls)[len(walls) // 2], sorted(logged)[len(logged) // 2]
    ratio = wall / epochs
    lines = [
        "## The edit loop: mlp2 given a new lr, `dvc repro --no-run-cache`",
        "",
        f"Stages that ran: {', '.join(sorted(stages))}.",
        "",
        "| what | seconds |",
        "|---|---|",
        f"| `dvc repro --no-run-cache`, wall | {cell(walls)} |",
        f"| mlp2's epochs, as its run logged them | {cell(logged)} |",
        f"| `fashion-mlp train mlp2 --no-tracking` alone, wall | {cell(alone)} |",
        f"| **wall / logged epoch seconds** | **{ratio:.2f}** |",
    ]
    return lines, [("edit loop: wall / mlp2's epoch seconds <= 2.5", f"{ratio:.2f}", ratio <= 2.5)]


def grid_params(asha: bool) -> dict[str, Any]:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["models"] = {"candidate": {"hidden": [256], "activation": "relu"}}
    params["mlflow"]["champion"] = "candidate"
    params["train"]["epochs"] = GRID_EPOCHS
    params["sweep"] |= {
        "name": "bench-grid",
        "trials": 1,
        "base": {"hidden": [256], "activation": "relu", "epochs": GRID_EPOCHS},
        "space": {"variant": {"grid": GRID}},
        "scheduler": {"grace_period": 1 if asha else GRID_EPOCHS, "reduction_factor": 3},
    }
    return params


def sweep_vs_queue() -> tuple[list[str], list[Target]]:
    """8 configurations at fixed epochs: a Ray sweep vs 8 queued DVC experiments (-j 2); then
    the same 8 with ASHA stopping the weak ones."""
    results: dict[str, tuple[float, float, int]] = {}  # seconds, best val_acc, trials completed
    for label, asha in (("Ray sweep, full grid", False), ("Ray sweep, ASHA", True)):
        with project_copy(grid_params(asha)) as project:
            log(f"{label} of {len(GRID)} configurations")
            seconds = timed(lambda: run(["fashion-mlp", "sweep", "--no-progress"], project))
            with (project / "reports/sweep/trials.csv").open() as stream:
                trials = list(csv.DictReader(stream))
            best = max(float(t["val_acc"]) for t in trials if t["val_acc"])
            completed = sum(t["stopped_early"] == "False" for t in trials)
            results[label] = (seconds, best, completed)
    with project_copy(grid_params(False)) as project:
        log(f"{len(GRID)} queued DVC experiments, dvc queue start -j 2")
        for config in GRID:
            hidden = json.dumps(config["hidden"]).replace(" ", "")
            run(
                [
                    "dvc",
                    "exp",
                    "run",
                    "--queue",
                    "-S",
                    f"models.candidate.hidden={hidden}",
                    "-S",
                    f"++models.candidate.lr={config['lr']}",
                ],
                project,
            )
        started = time.perf_counter()
        run(["dvc", "queue", "start", "-j", "2"], project)
        while re.search(r"\b(Queued|Running)\b", run(["dvc", "queue", "status"], project)):
            time.sleep(1)
        queue_seconds = time.perf_counter() - started
    full = results["Ray sweep, full grid"][0]
    speedup = queue_seconds / full
    lines = [
        f"## {len(GRID)} configurations, {GRID_EPOCHS} epochs each: wall seconds",
        "",
        "| how | seconds | trials per minute | best validation accuracy |",
        "|---|---|---|---|",
        f"| 8 queued DVC experiments, `dvc queue start -j 2` | {queue_seconds:.0f} | "
        f"{len(GRID) * 60 / queue_seconds:.1f} | (test accuracy only: DVC runs the pipeline) |",
    ]
    for label, (seconds, best, completed) in results.items():
        lines.append(
            f"| {label} ({completed} of {len(GRID)} ran all epochs) | {seconds:.0f} | "
            f"{len(GRID) * 60 / seconds:.1f} | {best:.4f} |"
        )
    return lines, [
        ("Ray sweep >= 3x faster than the DVC queue (8 configs)", f"{speedup:.1f}x", speedup >= 3)
    ]
