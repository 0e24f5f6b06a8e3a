"""Benchmarks: our trainer against the textbook loop and the compute floor, and the bookkeeping.

    make bench                  # = python benchmarks/run.py; about 25 minutes on 2 cores

Needs the pipeline's data and params (`dvc repro preprocess` first). Prints one Markdown report
and writes it to reports/benchmarks.md. Each figure is the median of several runs, with min and
max. The machine is shared and noisy: the ratios, measured side by side, are the results.

1. Textbook loop: torchvision FashionMNIST + ToTensor + DataLoader(256, shuffle) (textbook_loop.py)
2. Our trainer: `fashion_mlp.train.fit`, the function the train stage runs
3. Compute floor: the same forward, backward and SGD steps (and test forward) on preallocated
   tensors of the same shapes, with no data handling at all
4. Numerics: our trainer with `train.numerics` portable (the default: the same bits on every
   CPU) against native (torch's fastest kernels for this CPU, whose bits differ between CPUs)
5. System metrics: epochs of our trainer with MLflow's system-metrics monitor running, and not
6. Tracking: the train stage (`fashion-mlp train mlp1`) with MLflow vs with --no-tracking
7. Fixed costs by phase (phases.py): where the seconds of `train` and `evaluate` beyond the
   epochs go
8. Pipeline: `dvc repro` with nothing to do; `fashion-mlp --help` vs bare `python -c pass`
9. Parallel work and the pipeline (parallel.py): two trainings at once, queued experiments,
   the edit loop (one model's params changed, `dvc repro`), `dvc repro --force` and its
   stages' fixed costs, a Ray sweep against the DVC queue, ASHA against the full grid
"""

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from itertools import pairwise
from pathlib import Path

from fashion_mlp.numerics import apply_numerics_env

apply_numerics_env()  # before torch loads, as the CLI does: the pipeline's numerics

import torch
from torch.nn import functional as F

from fashion_mlp.atomic import fill_between_markers, write_text_atomic
from fashion_mlp.dataset import IN_FEATURES, NUM_CLASSES
from fashion_mlp.linalg import pin_numerics
from fashion_mlp.model import build_mlp, predict_logits
from fashion_mlp.numerics import cpu_description
from fashion_mlp.optimizers import make_optimizer
from fashion_mlp.params import ModelSpec, Params, RunConfig, load_params
from fashion_mlp.splits import Split, load_split, split_path
from fashion_mlp.train import fit
from parallel import (
    edit_loop,
    forced_repro,
    queued_experiments,
    sweep_vs_queue,
    two_trainings,
)
from phases import phase_section
from textbook_loop import accuracy, make_loaders, torchvision_layout, train_epoch

ROOT = Path(__file__).resolve().parents[1]
DOC_START = "<!-- benchmarks:start (written by `make bench`) -->"
DOC_END = "<!-- benchmarks:end -->"
BIN = Path(sys.executable).parent
MODELS = ("mlp1", "mlp2")


@dataclass
class Timing:
    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def cell(self) -> str:
        return f"{self.median:.3f} [{min(self.seconds):.3f}-{max(self.seconds):.3f}]"


def command_timing(command: list[str], repeats: int) -> Timing:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
        seconds.append(time.perf_counter() - started)
    return Timing(seconds)


def epoch_flop(spec: ModelSpec, train_count: int, test_count: int, batch_size: int) -> float:
    """Floating-point operations of one epoch: forward, backward and SGD update over the train
    set, plus the test forward. A multiply-add counts 2; the first layer computes no input
    gradient (the images need none)."""
    sizes = [IN_FEATURES, *spec.hidden, NUM_CLASSES]
    multiply_adds = sum(a * b for a, b in pairwise(sizes))
    weights = sum(a * b + b for a, b in pairwise(sizes))
    input_grads = multiply_adds - sizes[0] * sizes[1]
    per_image = 2 * (2 * multiply_adds + input_grads)
    steps = -(-train_count // batch_size)
    return train_count * per_image + steps * 2 * weights + test_count * 2 * multiply_adds


def textbook_epoch(config: RunConfig, root: Path) -> Callable[[], float]:
    """One textbook epoch per call (train pass + test accuracy); returns its seconds."""
    generator = torch.Generator().manual_seed(0)
    model = build_mlp(config.model, config.train.init_std, generator)
    train_loader, test_loader = make_loaders(root, config.train.batch_size, generator)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.train.lr)

    def epoch() -> float:
        started = time.perf_counter()
        train_epoch(model, train_loader, optimizer)
        accuracy(model, test_loader)
        return time.perf_counter() - started

    return epoch


def our_epoch(config: RunConfig, train: Split, test: Split) -> Callable[[], float]:
    """One epoch of the project's `fit` per call, on one model; returns fit's epoch_seconds."""
    params = config.train.model_copy(update={"epochs": 1, "device": "cpu"})
    generator = torch.Generator().manual_seed(params.seed)
    model = build_mlp(config.model, params.init_std, generator)
    return lambda: fit(model, train, test, params, generator).history[0]["epoch_seconds"]


def floor_epoch(config: RunConfig, train_count: int, test_count: int) -> Callable[[], float]:
    """The same arithmetic as one epoch of `fit` on preallocated tensors; returns its seconds."""
    params = config.train
    model = build_mlp(config.model, params.init_std, torch.Generator().manual_seed(0))
    optimizer = make_optimizer(model, params)
    full, rest = divmod(train_count, params.batch_size)
    sizes = [params.batch_size] * full + ([rest] if rest else [])
    inputs = {n: torch.rand(n, IN_FEATURES) for n in set(sizes)}
    labels = {n: torch.randint(0, NUM_CLASSES, (n,)) for n in set(sizes)}
    test_inputs = torch.rand(test_count, IN_FEATURES)

    def epoch() -> float:
        started = time.perf_counter()
        model.train()
        for n in sizes:
            loss = F.cross_entropy(model(inputs[n]), labels[n])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        predict_logits(model, test_inputs)
        return time.perf_counter() - started

    return epoch


def interleaved(contenders: dict[str, Callable[[], float]], repeats: int) -> dict[str, Timing]:
    """Run each contender once per round, after one warm-up round, so drift hits all alike."""
    for epoch in contenders.values():
        epoch()
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, epoch in contenders.items():
            seconds[name].append(epoch())
    return {name: Timing(values) for name, values in seconds.items()}


def tracking_overhead(model: str, experiment: str, repeats: int) -> tuple[Timing, Timing]:
    """Train-stage wall time with and without MLflow, runs interleaved so drift hits both."""
    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory() as folder:
        store = f"sqlite:///{Path(folder) / 'mlflow.db'}"
        # An existing store, as in any project after its first run (creating one is one-off).
        MlflowClient(store).create_experiment(experiment)
        runs: dict[str, list[float]] = {"--tracking": [], "--no-tracking": []}
        for _ in range(repeats):
            for flag, seconds in runs.items():
                command = [
                    str(BIN / "fashion-mlp"),
                    "--tracking-uri",
                    store,
                    "train",
                    model,
                    "--no-progress",
                    flag,
                    "--out-dir",
                    str(Path(folder) / flag),
                ]
                started = time.perf_counter()
                subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
                seconds.append(time.perf_counter() - started)
    return Timing(runs["--tracking"]), Timing(runs["--no-tracking"])


def pipeline_is_up_to_date() -> bool:
    status = subprocess.run(
        [str(BIN / "dvc"), "status", "--json", "dvc.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(status.stdout or "{}") == {}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


Target = tuple[str, str, bool]  # what, measured, met


def training_section(params: Params, repeats: int) -> tuple[list[str], list[Target]]:
    data_dir, raw_dir = ROOT / "data/processed", ROOT / "data/raw"
    train, test = load_split(data_dir, "train"), load_split(data_dir, "test")
    lines = [
        "## Training: seconds per epoch (60,000-image train pass + 10,000-image test accuracy)",
        "",
        "| model | textbook loop | our trainer | compute floor | textbook / ours | "
        "ours / floor | textbook / floor | GFLOP/s ours | GFLOP/s floor |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    targets: list[Target] = []
    with tempfile.TemporaryDirectory() as folder:
        root = torchvision_layout(raw_dir, Path(folder))
        for name in MODELS:
            config = params.run_config(name)
            log(f"{name}: textbook loop, our trainer, compute floor ({repeats} rounds)")
            timings = interleaved(
                {
                    "textbook": textbook_epoch(config, root),
                    "ours": our_epoch(config, train, test),
                    "floor": floor_epoch(config, len(train), len(test)),
                },
                repeats,
            )
            textbook, ours, floor = (timings[key].median for key in ("textbook", "ours", "floor"))
            flop = epoch_flop(config.model, len(train), len(test), config.train.batch_size)
            cells = [timings[key].cell() for key in ("textbook", "ours", "floor")]
            ratios = [f"{textbook / ours:.1f}x", f"{ours / floor:.2f}x", f"{textbook / floor:.1f}x"]
            rates = [f"{flop / seconds / 1e9:.0f}" for seconds in (ours, floor)]
            lines.append("| " + " | ".join([name, *cells, *ratios, *rates]) + " |")
            targets += [
                (
                    f"{name}: our trainer >= 10x faster than the textbook loop",
                    ratios[0],
                    textbook / ours >= 10,
                ),
                (
                    f"{name}: our trainer within 1.2x of the compute floor",
                    ratios[1],
                    ours / floor <= 1.2,
                ),
            ]
    return lines, targets


def bookkeeping_section(params: Params, repeats: int) -> tuple[list[str], list[Target]]:
    log("train stage with and without MLflow")
    tracked, untracked = tracking_overhead("mlp1", params.tracking.experiment, max(2, repeats // 2))
    share = tracked.median / untracked.median - 1
    log("start-up and dvc repro")
    python = [sys.executable, "-c"]
    bare = command_timing([*python, "pass"], 2 * repeats)
    cli_help = command_timing([str(BIN / "fashion-mlp"), "--help"], 2 * repeats)
    noop = (
        command_timing([str(BIN / "dvc"), "repro"], repeats) if pipeline_is_up_to_date() else None
    )
    rows = {
        "train stage `fashion-mlp train mlp1`, MLflow tracking": tracked.cell(),
        "train stage `fashion-mlp train mlp1 --no-tracking`": untracked.cell(),
        "`dvc repro`, nothing to do": noop.cell() if noop else "skipped: pipeline not up to date",
        "`python -c pass`": bare.cell(),
        "`fashion-mlp --help`": cli_help.cell(),
        "`python -c 'import torch'`": command_timing([*python, "import torch"], repeats).cell(),
        "`python -c 'import mlflow'`": command_timing([*python, "import mlflow"], repeats).cell(),
    }
    lines = ["## Bookkeeping: wall seconds", "", "| what | seconds |", "|---|---|"]
    lines += [f"| {what} | {cell} |" for what, cell in rows.items()]
    help_gap = cli_help.median - bare.median
    targets: list[Target] = [
        ("MLflow adds <= 5% to a train stage", f"+{share:.0%}", share <= 0.05),
        (
            "`dvc repro` with nothing to do < 3 s",
            f"{noop.median:.2f} s" if noop else "skipped",
            bool(noop and noop.median < 3),
        ),
        (
            "`fashion-mlp --help` within 0.5 s of `python -c pass`",
            f"+{help_gap:.2f} s",
            help_gap <= 0.5,
        ),
    ]
    return lines, targets


def ratio_row(
    name: str, measured: Timing, baseline: Timing, cost: str, limit: float, shown: str
) -> tuple[str, Target]:
    """`| name | measured | baseline | measured / baseline |` and its target: the ratio, formatted
    by `shown` (e.g. "{:.2f}x"), at most `limit`."""
    ratio = measured.median / baseline.median
    cell = shown.format(ratio)
    target = (f"{name}: {cost} <= {limit - 1:.0%} per epoch", cell, ratio <= limit)
    return f"| {name} | {measured.cell()} | {baseline.cell()} | {cell} |", target


# Epochs in a fresh process, as `fashion-mlp train` runs them with `train.numerics` portable (the
# same bits on every CPU) and native (torch's layers and MKL's fastest mode for this CPU).
NUMERICS_PROBE = """
import json, sys
from fashion_mlp.numerics import apply_numerics_env
apply_numerics_env()
from fashion_mlp.linalg import pin_numerics
from fashion_mlp.params import load_params
from fashion_mlp.splits import load_split
from fashion_mlp.train import fit, seeded_model
config = load_params("params.yaml").run_config(sys.argv[1])
params = config.train.model_copy(update={"epochs": 3, "device": "cpu", "numerics": sys.argv[2]})
pin_numerics(params.numerics)
train, test = load_split("data/processed", "train"), load_split("data/processed", "test")
model, generator = seeded_model(config.model, params)
history = fit(model, train, test, params, generator).history
print(json.dumps([row["epoch_seconds"] for row in history[1:]]))
"""
NUMERICS_MODELS = ("mlp1", "mlp2", "mlp_best")


def numerics_section(repeats: int) -> tuple[list[str], list[Target]]:
    """Our trainer's epochs with `train.numerics` portable and native, in fresh processes,
    interleaved (the first epoch of each, which warms up, left out)."""
    lines = [
        "## Numerics: seconds per epoch, portable against native (fresh processes, interleaved)",
        "",
        f"CPU: {cpu_description()}. portable: the default, the same bits on every x86-64 CPU "
        "(layers.py on `_sequential_gemm.c`, MKL compatible mode, oneDNN off); native: torch's "
        "own layers, MKL's fastest mode for this CPU and oneDNN (`train.numerics: native`). "
        "Epochs 2 and 3 of each run.",
        "",
        "| model | portable | native | portable / native |",
        "|---|---|---|---|",
    ]
    targets: list[Target] = []
    for name in NUMERICS_MODELS:
        seconds: dict[str, list[float]] = {"portable": [], "native": []}
        for _ in range(max(2, repeats // 2)):
            for numerics in seconds:
                log(f"{name}: epochs with {numerics} numerics")
                done = subprocess.run(
                    [sys.executable, "-c", NUMERICS_PROBE, name, numerics],
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                seconds[numerics] += json.loads(done.stdout.strip().splitlines()[-1])
        row, target = ratio_row(
            name,
            Timing(seconds["portable"]),
            Timing(seconds["native"]),
            "portable numerics cost",
            1.30,
            "{:.2f}x",
        )
        lines.append(row)
        targets.append(target)
    return lines, targets


def system_metrics_section(params: Params, repeats: int) -> tuple[list[str], list[Target]]:
    """Epochs of our trainer with MLflow's system-metrics monitor sampling (as train runs it,
    every second) and without it, interleaved round by round."""
    import mlflow
    from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    from fashion_mlp.tracking.runs import SYSTEM_METRICS_SECONDS

    data_dir = ROOT / "data/processed"
    train, test = load_split(data_dir, "train"), load_split(data_dir, "test")
    lines = [
        "## System metrics: seconds per epoch of our trainer, monitor on and off (interleaved)",
        "",
        "| model | monitor on | monitor off | on / off |",
        "|---|---|---|---|",
    ]
    targets: list[Target] = []
    with tempfile.TemporaryDirectory() as folder:
        client = mlflow.MlflowClient(f"sqlite:///{Path(folder) / 'mlflow.db'}")
        run = client.create_run(client.create_experiment("system-metrics-bench"))
        for name in MODELS:
            epoch = our_epoch(params.run_config(name), train, test)
            epoch()  # warm-up
            seconds: dict[str, list[float]] = {"off": [], "on": []}
            log(f"{name}: epochs with the system-metrics monitor on and off")
            for _ in range(repeats):
                seconds["off"].append(epoch())
                monitor = SystemMetricsMonitor(
                    run.info.run_id,
                    sampling_interval=SYSTEM_METRICS_SECONDS,
                    tracking_uri=client.tracking_uri,
                )
                monitor.monitors = [m for m in monitor.monitors if isinstance(m, CPUMonitor)]
                monitor.start()
                seconds["on"].append(epoch())
                monitor.finish()
            row, target = ratio_row(
                name,
                Timing(seconds["on"]),
                Timing(seconds["off"]),
                "system metrics cost",
                1.03,
                "{:.3f}",
            )
            lines.append(row)
            targets.append(target)
    return lines, targets


SECTIONS = (
    "training",
    "numerics",
    "system-metrics",
    "bookkeeping",
    "phases",
    "two-trainings",
    "queue",
    "edit-loop",
    "repro",
    "sweep",
)


def report(repeats: int, sections: tuple[str, ...]) -> str:
    """The Markdown report: a summary line, then one `##` section per measurement kind."""
    params = load_params(ROOT / "params.yaml")
    measured = {
        "training": lambda: training_section(params, repeats),
        "numerics": lambda: numerics_section(repeats),
        "system-metrics": lambda: system_metrics_section(params, repeats),
        "bookkeeping": lambda: bookkeeping_section(params, repeats),
        "phases": lambda: phase_section(max(3, repeats // 2)),
        "two-trainings": lambda: two_trainings(max(2, repeats // 2)),
        "queue": queued_experiments,
        "edit-loop": lambda: edit_loop(max(3, repeats // 2)),
        "repro": forced_repro,
        "sweep": sweep_vs_queue,
    }
    body: list[str] = []
    targets: list[Target] = []
    for section in sections:
        lines, met = measured[section]()
        body += [*lines, ""]
        targets += met
    lines = [
        f"`make bench` on {date.today()}: {cpu_description()}, {platform.machine()}, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads, Python "
        f"{platform.python_version()}, numerics {pin_numerics()}. Each cell: median "
        f"[min-max] seconds of {repeats} runs ({max(2, repeats // 2)} each way for the train "
        "stage and the two trainings); the queue, repro and sweep rows are single runs. Read the "
        "ratios: the machine is shared and noisy.",
        "",
        *body,
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        *(f"| {what} | {value} | {'yes' if met else 'no'} |" for what, value, met in targets),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=6, help="runs per figure (default 6)")
    parser.add_argument("--out", type=Path, default=ROOT / "reports/benchmarks.md")
    parser.add_argument(
        "--doc", type=Path, help="also refresh this file's tables (between its markers)"
    )
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections to run (default all: {','.join(SECTIONS)})",
    )
    args = parser.parse_args()
    sections = tuple(args.only.split(","))
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        sys.exit(f"error: --only: unknown sections {sorted(unknown)}; known: {SECTIONS}")
    if not split_path(ROOT / "data/processed", "train").exists() or not (ROOT / "configs").is_dir():
        sys.exit("error: the processed data or configs/ are missing; run `make repro` first")
    text = report(args.repeats, sections)
    write_text_atomic(args.out, "# Benchmarks\n\n" + text)
    if args.doc:
        fill_between_markers(args.doc, DOC_START, DOC_END, text)
    print(text)


if __name__ == "__main__":
    main()
