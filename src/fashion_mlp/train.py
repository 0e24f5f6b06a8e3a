"""Stage `train MODEL`: fit one MLP, track it in MLflow, save it for `evaluate`.

Reads `data/processed/{train,test}.pt` and params `train`, `models.MODEL`, `mlflow`. Writes to
`models/MODEL/`: `model.pt` (state dict + architecture), `history.csv` (one row per epoch, the
DVC plot), `run.json` (the MLflow run that `evaluate` logs into). The MLflow run is named after
the model; it holds every effective param, the per-epoch metrics (step = epoch), the data it used
(as dataset inputs, with DVC's digests) and the logged model.

    fashion-mlp train mlp1 --data-dir data/processed --out-dir models/mlp1

`fit` is the pure core (no files, no MLflow, no terminal); `train_model` does the I/O around it.
"""

import copy
import math
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from fashion_mlp import tracking
from fashion_mlp.artifacts import (
    HISTORY_FILE,
    METRIC_KEYS,
    MODEL_FILE,
    EpochMetrics,
    RunInfo,
    write_history,
    write_run_info,
)
from fashion_mlp.augment import augment
from fashion_mlp.dataset import NUM_CLASSES
from fashion_mlp.errors import PipelineError
from fashion_mlp.model import as_inputs, build_mlp, predict_logits, save_checkpoint
from fashion_mlp.numerics import reproducible_numerics
from fashion_mlp.params import ModelSpec, RunConfig, TrainParams
from fashion_mlp.splits import Split, dvc_digests, load_split, split_path
from fashion_mlp.threads import CoreShare
from fashion_mlp.tracking import DatasetRecord, TrackingTarget

# Cross-entropy of a uniform guess is ln(10) = 2.30. An epoch's mean loss 100 times that is
# divergence, not learning (lr 1000 gives 1e10 in epoch 1, then dead ReLUs and chance accuracy
# without ever reaching NaN), so it stops the run like a NaN does.
DIVERGED_LOSS = 100 * math.log(NUM_CLASSES)


def resolve_device(name: str) -> torch.device:
    """params `train.device`: `auto` takes the GPU when there is one; `cuda` insists on it."""
    if name == "cuda" and not torch.cuda.is_available():
        raise PipelineError(
            "train.device = 'cuda': no CUDA GPU is available here; use 'auto' or 'cpu'"
        )
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def seeded_model(spec: ModelSpec, params: TrainParams) -> tuple[nn.Sequential, torch.Generator]:
    """The freshly initialised model and the generator that goes on to shuffle and augment.

    torch's global seed is set too: dropout draws from it.
    """
    torch.manual_seed(params.seed)
    generator = torch.Generator().manual_seed(params.seed)
    return build_mlp(spec, params.init_std, generator), generator


def make_optimizer(model: nn.Module, params: TrainParams) -> torch.optim.Optimizer:
    if params.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    if params.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    return torch.optim.SGD(
        model.parameters(),
        lr=params.lr,
        momentum=params.momentum,
        weight_decay=params.weight_decay,
    )


def make_schedule(
    optimizer: torch.optim.Optimizer, params: TrainParams
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Per-epoch learning-rate schedule; cosine decays lr to zero over the epochs after warm-up."""
    if params.lr_schedule == "cosine":
        decay_epochs = max(1, params.epochs - params.warmup_epochs)
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=decay_epochs)
    return None


class WarmUp:
    """Linear learning-rate warm-up over the first `epochs`, step by step: the scheduled rate
    times (steps so far / warm-up steps). With 0 epochs it never touches the optimizer."""

    def __init__(self, optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int):
        self.optimizer = optimizer
        self.total = epochs * steps_per_epoch
        self.done = 0
        self.base = [group["lr"] for group in optimizer.param_groups]

    @property
    def active(self) -> bool:
        return self.done < self.total

    def before_step(self) -> None:
        self.done += 1
        for group, base in zip(self.optimizer.param_groups, self.base, strict=True):
            group["lr"] = base * self.done / self.total


class WeightAverage:
    """An exponential moving average of the weights (and batch-norm statistics), updated after
    every optimizer step; evaluation and the saved model use it. Off when `decay` is 0."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval() if decay else None
        if self.model is not None:
            self._averaged = [t for t in self.model.state_dict().values() if t.is_floating_point()]
            self._live = [t for t in model.state_dict().values() if t.is_floating_point()]

    @torch.no_grad()
    def update(self) -> None:
        if self.model is not None:
            torch._foreach_lerp_(self._averaged, self._live, 1.0 - self.decay)

    def pick(self, model: nn.Module) -> nn.Module:
        """The model to evaluate and keep: the average if there is one."""
        return self.model if self.model is not None else model


def train_one_epoch(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    params: TrainParams,
    generator: torch.Generator,
    warm_up: WarmUp | None = None,
    average: WeightAverage | None = None,
    on_batch_end: Callable[[], None] | None = None,
) -> tuple[float, float]:
    """One pass over shuffled mini-batches; returns (mean loss, accuracy) over the pass.

    The shuffle (and any augmentation) is drawn on the CPU from `generator`, so the batches are
    the same on every device. Each batch is gathered into one reused pair of buffers:
    allocating a fresh batch every step cost 3-11% of an epoch in probes on a 2-core CPU.
    """
    model.train()
    device = inputs.device
    batch_size = params.batch_size
    order = torch.randperm(len(labels), generator=generator).to(device)
    batch_inputs = inputs.new_empty((min(batch_size, len(labels)), *inputs.shape[1:]))
    batch_labels = labels.new_empty(len(batch_inputs))
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    augmenting = params.augment_shift > 0 or params.augment_flip
    for indices in order.split(batch_size):
        x = torch.index_select(inputs, 0, indices, out=batch_inputs[: len(indices)])
        y = torch.index_select(labels, 0, indices, out=batch_labels[: len(indices)])
        if augmenting:
            x = augment(x, params.augment_shift, params.augment_flip, generator)
        logits = model(x)
        if params.label_smoothing:
            loss = F.cross_entropy(logits, y, label_smoothing=params.label_smoothing)
        else:
            loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if warm_up is not None and warm_up.active:
            warm_up.before_step()
        optimizer.step()
        if average is not None:
            average.update()
        # Accumulate as tensors: no per-batch .item() round trip (a GPU sync).
        loss_sum += loss.detach() * len(indices)
        correct += (logits.detach().argmax(dim=1) == y).sum()
        if on_batch_end is not None:
            on_batch_end()
    return loss_sum.item() / len(labels), correct.item() / len(labels)


def evaluate_accuracy(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    return (predict_logits(model, inputs).argmax(dim=1) == labels).double().mean().item()


def epoch_metric_keys(held_out: str) -> tuple[str, ...]:
    """The per-epoch metrics of `fit`: METRIC_KEYS with the held-out split named (test or val)."""
    return tuple(key.replace("test_", f"{held_out}_") for key in METRIC_KEYS)


def fit(
    model: nn.Module,
    train: Split,
    held_out: Split,
    params: TrainParams,
    generator: torch.Generator,
    on_epoch_end: Callable[[EpochMetrics], None] | None = None,
    on_batch_end: Callable[[], None] | None = None,
    held_out_name: str = "test",
) -> tuple[list[EpochMetrics], nn.Module]:
    """Train `model` for `params.epochs` on the device it lives on.

    Returns one metrics dict per epoch (accuracy on `held_out` as `<held_out_name>_acc`) and the
    model to keep: `model` itself, or its weight average when `params.ema_decay` is set. Stops
    with a PipelineError at the first epoch whose loss is not finite or above DIVERGED_LOSS,
    before that epoch's metrics reach any callback (so NaN never gets logged).
    """
    device = next(model.parameters()).device
    train_inputs, held_inputs = as_inputs(train.images, device), as_inputs(held_out.images, device)
    train_labels, held_labels = train.labels.to(device), held_out.labels.to(device)
    optimizer = make_optimizer(model, params)
    steps_per_epoch = math.ceil(len(train) / params.batch_size)
    warm_up = (
        WarmUp(optimizer, params.warmup_epochs, steps_per_epoch) if params.warmup_epochs else None
    )
    schedule = make_schedule(optimizer, params)
    average = WeightAverage(model, params.ema_decay)
    held_key = f"{held_out_name}_acc"
    history = []
    for epoch in range(1, params.epochs + 1):
        started = time.perf_counter()
        train_loss, train_acc = train_one_epoch(
            model,
            train_inputs,
            train_labels,
            optimizer,
            params,
            generator,
            warm_up,
            average,
            on_batch_end,
        )
        if not math.isfinite(train_loss) or train_loss > DIVERGED_LOSS:
            raise PipelineError(
                f"training diverged in epoch {epoch}: train loss is {train_loss:.4g}, a uniform "
                f"guess scores {math.log(NUM_CLASSES):.2f} (lr={params.lr}); "
                "lower the learning rate"
            )
        held_acc = evaluate_accuracy(average.pick(model), held_inputs, held_labels)
        metrics = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_acc": train_acc,
            held_key: held_acc,
            "epoch_seconds": time.perf_counter() - started,
        }
        history.append(metrics)
        if schedule is not None and epoch > params.warmup_epochs:
            schedule.step()
        if on_epoch_end is not None:
            on_epoch_end(metrics)
    return history, average.pick(model)


def dataset_records(data_dir: Path, splits: Mapping[str, Split], commit: str | None) -> list:
    """The processed splits as MLflow dataset inputs, digested as DVC digests them."""
    folder_md5, file_md5s = dvc_digests(data_dir)
    contexts = {"train": "training", "test": "testing"}
    tensor_spec = '[{{"type": "tensor", "tensor-spec": {{"dtype": "{}", "shape": {}}}}}]'
    schema = {
        "mlflow_tensorspec": {
            "features": tensor_spec.format("uint8", "[-1, 28, 28]"),
            "targets": tensor_spec.format("int64", "[-1]"),
        }
    }
    return [
        DatasetRecord(
            name=f"fashion-mnist-{split}",
            digest=file_md5s[split_path(Path("."), split).name],
            source={
                "uri": split_path(data_dir, split).as_posix(),
                "dvc_out": Path(data_dir).as_posix(),
                "dvc_md5": folder_md5,
                "git_commit": commit or "unknown",
            },
            schema=schema,
            profile={"images": len(data), "classes": int(data.labels.max()) + 1},
            context=contexts[split],
        )
        for split, data in splits.items()
    ]


def train_model(
    config: RunConfig,
    data_dir: Path,
    out_dir: Path,
    target: TrackingTarget | None,
    tags: Mapping[str, str],
    cores: CoreShare,
    show_progress: bool = True,
) -> list[EpochMetrics]:
    """Train `config`'s model on the processed data, track it, and write `out_dir`'s files.

    Output files are written only after training and MLflow logging succeed. With `target`
    None nothing is tracked and no run.json is written (a benchmark of the bare stage).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    params = config.train
    device = resolve_device(params.device)
    numerics = reproducible_numerics()
    splits = {"train": load_split(data_dir, "train"), "test": load_split(data_dir, "test")}
    model, generator = seeded_model(config.model, params)
    model = model.to(device)
    run_tags = {"torch_device": str(device), "numerics": numerics, **tags}
    if target is not None:
        closed = tracking.close_orphaned_runs(target, config.name)
        if closed:
            run_tags["fashion_mlp.closed_orphans"] = ",".join(closed)
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
        if run is not None:
            commit = tags.get("git_commit")
            tracking.log_datasets(run.info.run_id, dataset_records(data_dir, splits, commit))
        epochs = progress.add_task(f"{config.name} epochs", total=params.epochs, status="")
        batches_per_epoch = math.ceil(len(splits["train"]) / params.batch_size)
        batches = progress.add_task("batches", total=batches_per_epoch, status="")

        def on_epoch_end(metrics: EpochMetrics) -> None:
            if run is not None:
                tracking.log_metrics({k: metrics[k] for k in METRIC_KEYS}, step=metrics["epoch"])
            summary = "  ".join(f"{k} {metrics[k]:.4f}" for k in METRIC_KEYS)
            progress.update(epochs, advance=1, status=summary)
            progress.reset(batches)
            progress.console.log(f"{config.name} epoch {metrics['epoch']}: {summary}")

        def on_batch_end() -> None:
            cores.rebalance()
            progress.advance(batches)

        with cores:
            history, kept = fit(
                model,
                splits["train"],
                splits["test"],
                params,
                generator,
                on_epoch_end=on_epoch_end,
                on_batch_end=on_batch_end,
            )
        kept = kept.cpu()
        if run is not None:
            tracking.set_tags({"torch_threads": cores.describe()})
            model_uri = _log_model(kept, splits["test"])
        out_dir = Path(out_dir)
        save_checkpoint(kept, config.model, out_dir / MODEL_FILE)
        write_history(history, out_dir / HISTORY_FILE, METRIC_KEYS)
        if run is not None:
            write_run_info(out_dir, RunInfo(run_id=run.info.run_id, model_uri=model_uri))
    return history


def _log_model(model: nn.Module, test: Split) -> str:
    """Log the model in MLflow's safe `pt2` format (a torch.export graph: loading it runs no
    pickled code), with a signature and a real input example (five test images); its URI."""
    import mlflow
    from mlflow.models import infer_signature

    example = as_inputs(test.images[:5]).numpy()
    with torch.inference_mode():
        output = model.eval()(torch.from_numpy(example)).numpy()
    info = mlflow.pytorch.log_model(
        model,
        name="model",
        # Named, not left to MLflow: its default differs between versions and on Databricks.
        serialization_format="pt2",
        signature=infer_signature(example, output),
        input_example=example,
        # The network needs only torch. Naming it skips MLflow's requirement inference, a
        # subprocess that costs ~7 s per logged model.
        pip_requirements=mlflow.pytorch.get_default_pip_requirements(),
    )
    return info.model_uri
