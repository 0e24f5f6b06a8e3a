"""Where a stage's fixed cost goes: `train` and `evaluate` timed phase by phase (run.py).

Each measurement is a fresh process running the real CLI command, with timers wrapped around the
functions that mark the phases (the critical path, on the main thread) and around the tracking
thread's work (in the background, overlapping it). `python benchmarks/phases.py train mlp1 DIR`
prints one measurement as JSON; `phase_section` runs several and writes the tables.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
Target = tuple[str, str, bool]
STARTED = time.perf_counter()


def _timed(owner: Any, name: str, spans: dict, label: str, keep: dict | None = None) -> None:
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        begun = time.perf_counter()
        try:
            result = original(*args, **kwargs)
            if keep is not None:
                keep[label] = result
            return result
        finally:
            spans[label].append((begun - STARTED, time.perf_counter() - STARTED))

    setattr(owner, name, wrapper)


def measure(command: str, model: str, folder: Path) -> dict[str, float]:
    """Run `fashion-mlp COMMAND MODEL` in this process against the store and outputs in
    `folder`; the phases' seconds."""
    from fashion_mlp.numerics import apply_numerics_env

    apply_numerics_env()  # before torch loads, as the CLI does
    from fashion_mlp import cli
    from fashion_mlp.tracking.runs import Run, Runs
    from fashion_mlp.tracking.store import Store

    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    kept: dict[str, Any] = {}
    _timed(Store, "_open", spans, "background: MLflow store set-up")
    _timed(Runs, "_open", spans, "background: MLflow import, store, run")
    _timed(Run, "_log_model", spans, "background: model export and logging")
    if command == "train":  # each command's own module only: evaluate loads no torch
        import fashion_mlp.train as train

        _timed(train, "train_model", spans, "command")
        _timed(train, "load_split", spans, "data")
        _timed(train, "seeded_model", spans, "model")
        _timed(train, "fit", spans, "training (fit)", kept)
        _timed(Runs, "_finish", spans, "waiting for the tracking thread")
    else:
        import fashion_mlp.evaluate as evaluate

        _timed(evaluate, "evaluate_model", spans, "command")
        _timed(evaluate, "read_test_logits", spans, "data")
        _timed(evaluate, "load_arrays", spans, "data")
        _timed(evaluate, "evaluate", spans, "metrics")
        _timed(evaluate, "write_evaluation", spans, "files and figure")
        _timed(Runs, "trained", spans, "waiting for the store (finding the run)")
        _timed(Runs, "log_evaluation", spans, "logging the evaluation")
    store = f"sqlite:///{folder / 'mlflow.db'}"
    arguments = ["--tracking-uri", store, command, model]
    if command == "train":
        arguments += ["--no-progress", "--out-dir", str(folder / model)]
    else:
        arguments += ["--model-dir", str(folder / model), "--metrics-file", str(folder / "m.json")]
        arguments += ["--out-dir", str(folder / "evaluation")]
    sys.argv = ["fashion-mlp", *arguments]
    try:
        cli.run()  # the console script's entry: the process then exits as the command's does
    except SystemExit as stop:
        if stop.code:
            raise
    ended = time.perf_counter() - STARTED
    phases = {label: sum(b - a for a, b in found) for label, found in spans.items()}
    ((command_start, _),) = spans["command"]
    phases["start-up and imports (before the command's work)"] = command_start
    if command == "train":
        history = kept["training (fit)"].history
        phases["of which epochs"] = sum(row["epoch_seconds"] for row in history)
        ((_, model_end),) = spans["model"]
        ((fit_start, fit_end),) = spans["training (fit)"]
        phases["compiler import and run start"] = fit_start - model_end
        phases["after training (checkpoint, logits, model logging, files)"] = (
            spans["command"][0][1] - fit_end
        )
    phases["total in-process"] = ended
    return phases


def phase_section(repeats: int) -> tuple[list[str], list[Target]]:
    """Each of train and evaluate `repeats` times; the median of every phase."""
    results: dict[str, list[dict[str, float]]] = {"train": [], "evaluate": []}
    with tempfile.TemporaryDirectory(prefix="fashion-mlp-phases-") as scratch:
        folder = Path(scratch)
        for round_ in range(repeats):
            for command in ("train", "evaluate"):
                print(f"phases of {command} mlp1, round {round_ + 1}/{repeats}", file=sys.stderr)
                started = time.perf_counter()
                done = subprocess.run(
                    [sys.executable, __file__, command, "mlp1", str(folder)],
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                phases = json.loads(done.stdout.strip().splitlines()[-1])
                phases["total wall (the process)"] = time.perf_counter() - started
                phases["interpreter start and exit (wall minus in-process)"] = (
                    phases["total wall (the process)"] - phases["total in-process"]
                )
                results[command].append(phases)
    lines: list[str] = []
    targets: list[Target] = []
    for command, rounds in results.items():
        median = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
        epochs = median.get("of which epochs", 0.0)
        fixed = median["total wall (the process)"] - epochs
        lines += [
            f"## Fixed cost of `fashion-mlp {command} mlp1` by phase: median seconds of "
            f"{repeats} runs",
            "",
            "| phase | seconds |",
            "|---|---|",
            *(f"| {key} | {value:.2f} |" for key, value in median.items()),
            f"| **fixed cost (wall minus epochs)** | **{fixed:.2f}** |",
            "",
        ]
        limit = 3.0 if command == "train" else 2.5
        targets.append((f"`{command}` fixed cost <= {limit:g} s", f"{fixed:.2f} s", fixed <= limit))
    return lines[:-1], targets


if __name__ == "__main__":
    try:
        print(json.dumps(measure(sys.argv[1], sys.argv[2], Path(sys.argv[3]))))
    except Exception:
        # The command armed cli.QuickExit with its own status (0), which would end this process
        # with 0 after a failed measurement: fail it here instead.
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
