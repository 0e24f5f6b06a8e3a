"""Stage `train MODEL`: fit one MLP, track it in MLflow, save it for `evaluate`.

Reads `data/processed/{train,test}.pt` and params `train`, `models.MODEL`, `mlflow`. Writes to
`models/MODEL/`: `model.pt` (state dict + architecture), `history.csv` (one row per epoch, the
DVC plot), `run.json` (the MLflow run id that `evaluate` logs into). The MLflow run is named
after the model; it holds every effective param, the per-epoch metrics (step = epoch) and the
logged model.

    fashion-mlp train mlp1 --data-dir data/processed --out-dir models/mlp1

`fit` is the pure core (no files, no MLflow, no terminal); `train_model` does the I/O around it.
"""

import csv
import json
import math
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from fashion_mlp import tracking
from fashion_mlp.atomic import atomic_path, write_text_atomic
from fashion_mlp.errors import PipelineError
from fashion_mlp.model import NUM_CLASSES, build_mlp, save_checkpoint
from fashion_mlp.params import RunConfig, TrainParams
from fashion_mlp.preprocess import Split, data_fingerprint, load_split
from fashion_mlp.tracking import TrackingTarget

METRIC_KEYS = ("train_loss", "train_acc", "test_acc", "epoch_seconds")
EVAL_BATCH_SIZE = 8192
# Cross-entropy of a uniform guess is ln(10) = 2.30. An epoch's mean loss 100 times that is
# divergence, not learning (lr 1000 gives 1e10 in epoch 1, then dead ReLUs and chance accuracy
# without ever reaching NaN), so it stops the run like a NaN does.
DIVERGED_LOSS = 100 * math.log(NUM_CLASSES)
EpochMetrics = dict[str, float]  # METRIC_KEYS, plus "epoch"


def as_inputs(images: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1], converted once for the whole split (on `device`)."""
    return images.to(device).to(torch.float32).div_(255.0)


def resolve_device(name: str) -> torch.device:
    """params `train.device`: `auto` takes the GPU when there is one; `cuda` insists on it."""
    if name == "cuda" and not torch.cuda.is_available():
        raise PipelineError(
            "train.device = 'cuda': no CUDA GPU is available here; use 'auto' or 'cpu'"
        )
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def make_optimizer(model: nn.Module, params: TrainParams) -> torch.optim.Optimizer:
    if params.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    return torch.optim.SGD(
        model.parameters(),
        lr=params.lr,
        momentum=params.momentum,
        weight_decay=params.weight_decay,
    )


def make_schedule(
    optimizer: torch.optim.Optimizer, params: TrainParams
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Per-epoch learning-rate schedule; cosine decays lr to zero over the run."""
    if params.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=params.epochs)
    return None


def train_one_epoch(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    generator: torch.Generator,
    on_batch_end: Callable[[], None] | None = None,
) -> tuple[float, float]:
    """One pass over shuffled mini-batches; returns (mean loss, accuracy) over the pass.

    The shuffle is drawn on the CPU from `generator`, so the batch order is the same on every
    device. Each batch is gathered into one reused pair of buffers: allocating a fresh batch
    every step cost 3-11% of an epoch in probes on a 2-core CPU.
    """
    model.train()
    device = inputs.device
    order = torch.randperm(len(labels), generator=generator).to(device)
    batch_inputs = inputs.new_empty((min(batch_size, len(labels)), *inputs.shape[1:]))
    batch_labels = labels.new_empty(len(batch_inputs))
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for indices in order.split(batch_size):
        x = torch.index_select(inputs, 0, indices, out=batch_inputs[: len(indices)])
        y = torch.index_select(labels, 0, indices, out=batch_labels[: len(indices)])
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # Accumulate as tensors: no per-batch .item() round trip (a GPU sync).
        loss_sum += loss.detach() * len(indices)
        correct += (logits.detach().argmax(dim=1) == y).sum()
        if on_batch_end is not None:
            on_batch_end()
    return loss_sum.item() / len(labels), correct.item() / len(labels)


@torch.inference_mode()
def predict_logits(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    model.eval()
    return torch.cat([model(chunk) for chunk in inputs.split(EVAL_BATCH_SIZE)])


def evaluate_accuracy(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    return (predict_logits(model, inputs).argmax(dim=1) == labels).double().mean().item()


def fit(
    model: nn.Module,
    train: Split,
    test: Split,
    params: TrainParams,
    generator: torch.Generator,
    on_epoch_end: Callable[[EpochMetrics], None] | None = None,
    on_batch_end: Callable[[], None] | None = None,
) -> list[EpochMetrics]:
    """Train `model` for `params.epochs` on the device it lives on; one metrics dict per epoch.

    Stops with a PipelineError at the first epoch whose loss is not finite or above
    DIVERGED_LOSS, before that epoch's metrics reach any callback (so NaN never gets logged).
    """
    device = next(model.parameters()).device
    train_inputs, test_inputs = as_inputs(train.images, device), as_inputs(test.images, device)
    train_labels, test_labels = train.labels.to(device), test.labels.to(device)
    optimizer = make_optimizer(model, params)
    schedule = make_schedule(optimizer, params)
    history = []
    for epoch in range(1, params.epochs + 1):
        started = time.perf_counter()
        train_loss, train_acc = train_one_epoch(
            model, train_inputs, train_labels, optimizer, params.batch_size, generator, on_batch_end
        )
        if not math.isfinite(train_loss) or train_loss > DIVERGED_LOSS:
            raise PipelineError(
                f"training diverged in epoch {epoch}: train loss is {train_loss:.4g}, a uniform "
                f"guess scores {math.log(NUM_CLASSES):.2f} (lr={params.lr}); "
                "lower the learning rate"
            )
        test_acc = evaluate_accuracy(model, test_inputs, test_labels)
        metrics = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "test_acc": test_acc,
            "epoch_seconds": time.perf_counter() - started,
        }
        history.append(metrics)
        if schedule is not None:
            schedule.step()
        if on_epoch_end is not None:
            on_epoch_end(metrics)
    return history


def write_history(history: list[EpochMetrics], path: Path) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=["epoch", *METRIC_KEYS])
        writer.writeheader()
        writer.writerows(history)


def read_history(path: Path) -> list[EpochMetrics]:
    with Path(path).open(newline="") as stream:
        return [
            {key: (int(v) if key == "epoch" else float(v)) for key, v in row.items()}
            for row in csv.DictReader(stream)
        ]


def read_run_info(model_dir: Path) -> dict[str, str]:
    """What train wrote to run.json: the MLflow `run_id` and the logged `model_uri`."""
    path = Path(model_dir) / "run.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run `fashion-mlp train` first") from None


def train_model(
    config: RunConfig,
    data_dir: Path,
    out_dir: Path,
    target: TrackingTarget | None,
    tags: Mapping[str, str],
    show_progress: bool = True,
) -> list[EpochMetrics]:
    """Train `config`'s model on the processed data, track it, and write `out_dir`'s files.

    Output files are written only after training and MLflow logging succeed. With `target`
    None nothing is tracked and no run.json is written (a benchmark of the bare stage).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    params = config.train
    device = resolve_device(params.device)
    train, test = load_split(data_dir, "train"), load_split(data_dir, "test")
    torch.manual_seed(params.seed)
    generator = torch.Generator().manual_seed(params.seed)
    model = build_mlp(config.model, params.init_std, generator).to(device)
    run_tags = {"data_md5": data_fingerprint(data_dir), "torch_device": str(device), **tags}
    batches_per_epoch = math.ceil(len(train) / params.batch_size)
    mlflow_run = (
        tracking.start_run(target, config.name, config.flat(), run_tags)
        if target is not None
        else nullcontext()
    )

    with (
        mlflow_run as run,
        Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            disable=not show_progress,
        ) as progress,
    ):
        epochs = progress.add_task(f"{config.name} epochs", total=params.epochs, status="")
        batches = progress.add_task("batches", total=batches_per_epoch, status="")

        def on_epoch_end(metrics: EpochMetrics) -> None:
            if run is not None:
                tracking.log_metrics({k: metrics[k] for k in METRIC_KEYS}, step=metrics["epoch"])
            summary = "  ".join(f"{k} {metrics[k]:.4f}" for k in METRIC_KEYS)
            progress.update(epochs, advance=1, status=summary)
            progress.reset(batches)
            progress.console.log(f"{config.name} epoch {metrics['epoch']}: {summary}")

        history = fit(
            model,
            train,
            test,
            params,
            generator,
            on_epoch_end=on_epoch_end,
            on_batch_end=lambda: progress.advance(batches),
        )
        model = model.cpu()
        model_uri = _log_model(model, test) if run is not None else None
        out_dir = Path(out_dir)
        save_checkpoint(model, config.model, out_dir / "model.pt")
        write_history(history, out_dir / "history.csv")
        if run is not None:
            run_info = {"run_id": run.info.run_id, "model_uri": model_uri}
            write_text_atomic(out_dir / "run.json", json.dumps(run_info, indent=2) + "\n")
    return history


def _log_model(model: nn.Module, test: Split) -> str:
    """Log the model with a signature and a real input example (five test images); its URI."""
    import mlflow
    from mlflow.models import infer_signature

    example = as_inputs(test.images[:5]).numpy()
    with torch.inference_mode():
        output = model.eval()(torch.from_numpy(example)).numpy()
    info = mlflow.pytorch.log_model(
        model,
        name="model",
        signature=infer_signature(example, output),
        input_example=example,
        # The network needs only torch (and cloudpickle to unpickle it). Naming them skips
        # MLflow's requirement inference, a subprocess that costs ~7 s per logged model.
        pip_requirements=mlflow.pytorch.get_default_pip_requirements(),
    )
    return info.model_uri
