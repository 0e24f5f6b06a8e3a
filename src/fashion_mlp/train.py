"""Stage `train MODEL`: fit one MLP, track it in MLflow, save it for `evaluate`.

Reads the model's effective params: `configs/MODEL.json` (written by `configure`; what
`dvc.yaml` passes as --config) or, run by hand without --config, the params file itself, so
what trains is what it says. And `data/processed/{train,test}.safetensors`. Writes to
`models/MODEL/`: `model.safetensors` (the weights with the architecture), `history.csv` (one row
per epoch: the DVC plot) and `test_logits.safetensors` (the kept model's logits for every test
image, from its last epoch's held-out pass: `evaluate` turns them into its metrics). All are
functions of the inputs only, and all are replaced together, after the MLflow run ended
FINISHED, or not at all. The MLflow run is named after the model; it holds every effective
param, the per-epoch metrics (step = epoch, wall-clock seconds included), the data it used (as
dataset inputs, with DVC's digests), the machine's numerics, system metrics and the model, a
LoggedModel named after it. A model that ends at about chance accuracy gets a warning line.

    fashion-mlp train mlp1 --config configs/mlp1.json --data-dir data/processed \
        --out-dir models/mlp1

`fit` is the pure core (no files, no MLflow, no terminal); `train_model` does the I/O around it.
"""

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from fashion_mlp.artifacts import (
    HISTORY_FILE,
    HISTORY_KEYS,
    MODEL_FILE,
    TEST_LOGITS_FILE,
    InputSnapshot,
    history_csv,
    logits_bytes,
)
from fashion_mlp.atomic import atomic_paths
from fashion_mlp.augment import augment
from fashion_mlp.dataset import NUM_CLASSES
from fashion_mlp.epoch_metrics import (
    EPOCH,
    EPOCH_SECONDS,
    LR,
    TRAIN_ACC,
    TRAIN_LOSS,
    EpochMetrics,
    held_out_acc,
)
from fashion_mlp.errors import PipelineError
from fashion_mlp.linalg import pin_numerics
from fashion_mlp.model import (
    as_inputs,
    build_mlp,
    checkpoint_bytes,
    predict_logits,
    training_memory,
)
from fashion_mlp.numerics import cpu_description
from fashion_mlp.optimizers import make_optimizer, make_rate_schedule
from fashion_mlp.params import ModelSpec, RunConfig, TrainParams
from fashion_mlp.splits import Split, load_split
from fashion_mlp.threads import CoreShare
from fashion_mlp.tracking.datasets import dataset_records
from fashion_mlp.tracking.runs import NullRuns, Runs

# Cross-entropy of a uniform guess is ln(10) = 2.30. An epoch's mean loss 100 times that is
# divergence, not learning (lr 1000 gives 1e10 in epoch 1, then dead ReLUs and chance accuracy
# without ever reaching NaN), so it stops the run like a NaN does.
DIVERGED_LOSS = 100 * math.log(NUM_CLASSES)
# Guessing scores 1 / 10. A training that ends below twice that has collapsed (lr 5.0 ends at
# 0.1000, dead ReLUs; an EMA decay of 0.999999999 at 0.11): still finite, so only said.
CHANCE_ACCURACY = 1 / NUM_CLASSES
TRAIN_STAGE = "train"


def collapsed_warning(model: str, accuracy: float, params: TrainParams) -> str | None:
    """One line when the model ended at about chance accuracy, else None."""
    if accuracy >= 2 * CHANCE_ACCURACY:
        return None
    return (
        f"{model} ends at test accuracy {accuracy:.4f}, about chance ({CHANCE_ACCURACY:.2f} for "
        f"{NUM_CLASSES} classes): the training collapsed (lr {params.lr}, ema_decay "
        f"{params.ema_decay}); `register` refuses it as champion (params "
        "mlflow.champion_min_test_acc)"
    )


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
    refuse_what_cannot_fit(spec, params)
    torch.manual_seed(params.seed)
    generator = torch.Generator().manual_seed(params.seed)
    return build_mlp(spec, params.init_std, generator, params.numerics), generator


def refuse_what_cannot_fit(spec: ModelSpec, params: TrainParams) -> None:
    """Widths that pass validation can still need more memory than the machine has (hidden
    [65536, 65536] is 4.4e9 weights): say so before torch's allocation fails or the OOM killer
    strikes."""
    import psutil

    weights, needed = training_memory(spec, params.batch_size)
    available = psutil.virtual_memory().available
    if needed > available:
        raise PipelineError(
            f"hidden {list(spec.hidden)}: training needs about {needed / 2**30:.1f} GiB of memory "
            f"({weights:.3g} weights), this machine has {available / 2**30:.1f} GiB free; make "
            "the layers narrower"
        )


def weight_average(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel | None:
    """An exponential moving average of the weights and batch-norm statistics, updated after
    every step; evaluation and the saved model use it. None when `decay` is 0.

    torch's AveragedModel starts the average from the weights after the first step."""
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def train_one_epoch(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    rates: torch.optim.lr_scheduler.LRScheduler | None,
    params: TrainParams,
    generator: torch.Generator,
    average: torch.optim.swa_utils.AveragedModel | None = None,
    on_batch_end: Callable[[], None] | None = None,
) -> tuple[float, float, float]:
    """One pass over shuffled mini-batches; returns (mean loss, accuracy, last learning rate).

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
    rate = optimizer.param_groups[0]["lr"]
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
        rate = optimizer.param_groups[0]["lr"]
        optimizer.step()
        if rates is not None:
            rates.step()
        if average is not None:
            average.update_parameters(model)
        # Accumulate as tensors: no per-batch .item() round trip (a GPU sync).
        loss_sum += loss.detach() * len(indices)
        correct += (logits.detach().argmax(dim=1) == y).sum()
        if on_batch_end is not None:
            on_batch_end()
    return loss_sum.item() / len(labels), correct.item() / len(labels), rate


@dataclass(frozen=True)
class Fitted:
    """What `fit` returns."""

    history: list[EpochMetrics]  # one metrics dict per epoch
    model: nn.Module  # the model to keep: the trained one, or its weight average
    held_out_logits: torch.Tensor  # the kept model's logits for the held-out split


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(dim=1) == labels).double().mean().item()


def fit(
    model: nn.Module,
    train: Split,
    held_out: Split,
    params: TrainParams,
    generator: torch.Generator,
    on_epoch_end: Callable[[EpochMetrics], None] | None = None,
    on_batch_end: Callable[[], None] | None = None,
    held_out_name: str = "test",
) -> Fitted:
    """Train `model` for `params.epochs` on the device it lives on.

    Each epoch's metrics are the registry's (epoch_metrics.py, the held-out accuracy named
    after `held_out_name`) with `epoch` and `epoch_seconds`. The model kept is `model` itself,
    or its weight average when `params.ema_decay` is set; its held-out logits are the last
    epoch's. Stops with a PipelineError at the first epoch whose loss is not finite or above
    DIVERGED_LOSS, before that epoch's metrics reach any callback (so NaN never gets logged).
    """
    device = next(model.parameters()).device
    train_inputs, held_inputs = as_inputs(train.images, device), as_inputs(held_out.images, device)
    train_labels, held_labels = train.labels.to(device), held_out.labels.to(device)
    optimizer = make_optimizer(model, params)
    steps_per_epoch = math.ceil(len(train) / params.batch_size)
    # A constant rate needs no scheduler: the d2l recipe then runs exactly the plain loop.
    scheduled = params.warmup_epochs > 0 or params.lr_schedule != "constant"
    rates = make_rate_schedule(optimizer, params, steps_per_epoch) if scheduled else None
    average = weight_average(model, params.ema_decay)
    kept = average.module if average is not None else model
    history, held_logits = [], torch.empty(0)
    for epoch in range(1, params.epochs + 1):
        started = time.perf_counter()
        train_loss, train_acc, rate = train_one_epoch(
            model,
            train_inputs,
            train_labels,
            optimizer,
            rates,
            params,
            generator,
            average,
            on_batch_end,
        )
        if not math.isfinite(train_loss) or train_loss > DIVERGED_LOSS:
            raise PipelineError(
                f"training diverged in epoch {epoch}: train loss is {train_loss:.4g}, a uniform "
                f"guess scores {math.log(NUM_CLASSES):.2f} (lr={params.lr}); "
                "lower the learning rate"
            )
        held_logits = predict_logits(kept, held_inputs)
        metrics = {
            EPOCH: epoch,
            TRAIN_LOSS: train_loss,
            TRAIN_ACC: train_acc,
            held_out_acc(held_out_name): accuracy(held_logits, held_labels),
            LR: rate,
            EPOCH_SECONDS: time.perf_counter() - started,
        }
        history.append(metrics)
        if on_epoch_end is not None:
            on_epoch_end(metrics)
    return Fitted(history, kept, held_logits)


def train_model(
    config: RunConfig,
    data_dir: Path,
    out_dir: Path,
    runs: Runs | NullRuns,
    tags: Mapping[str, str],
    cores: CoreShare,
    inputs: InputSnapshot,
    show_progress: bool = True,
) -> list[EpochMetrics]:
    """Train `config`'s model on the processed data, track it in `runs`, write `out_dir`,
    unless `inputs` (the files `config` came from) changed meanwhile: then nothing is written
    and the run fails."""
    from fashion_mlp.progress import EpochProgress

    params = config.train
    device = resolve_device(params.device)
    run_tags = {
        "torch_device": str(device),
        "numerics": pin_numerics(params.numerics),
        "cpu": cpu_description(),
        **tags,
    }
    splits = {"train": load_split(data_dir, "train"), "test": load_split(data_dir, "test")}
    model, generator = seeded_model(config.model, params)
    model = model.to(device)
    # torch imports its compiler (about 1 s of Python) at the first optimizer step. Importing it
    # here, before the run opens, keeps it from contending for the GIL with MLflow's import and
    # store setup, which then overlap the epochs, whose matrix products release the GIL.
    import torch._dynamo  # noqa: F401

    out_dir = Path(out_dir)
    outputs = [out_dir / name for name in (MODEL_FILE, HISTORY_FILE, TEST_LOGITS_FILE)]
    steps = math.ceil(len(splits["train"]) / params.batch_size)
    # The outputs move in before the run ends, so a run that could not write them ends FAILED.
    with (
        runs.start(config.name, TRAIN_STAGE, config.flat(), run_tags, system_metrics=True) as run,
        atomic_paths(*outputs) as (weights_file, history_file, logits_file),
        EpochProgress(config.name, params.epochs, steps, show_progress) as progress,
    ):
        labels = {split: data.labels for split, data in splits.items()}
        run.log_datasets(dataset_records(data_dir, labels, tags.get("git_commit")))

        def on_epoch_end(metrics: EpochMetrics) -> None:
            run.log_metrics({k: v for k, v in metrics.items() if k != EPOCH}, metrics[EPOCH])
            progress.epoch_done(metrics, HISTORY_KEYS)

        def on_batch_end() -> None:
            cores.rebalance()
            progress.batch_done()

        with cores:
            fitted = fit(
                model,
                splits["train"],
                splits["test"],
                params,
                generator,
                on_epoch_end=on_epoch_end,
                on_batch_end=on_batch_end,
            )
        kept = fitted.model.cpu()
        run.set_tags({"torch_threads": cores.describe()})
        content = checkpoint_bytes(kept, config.model)
        example = as_inputs(splits["test"].images[:5]).numpy()
        # Last: MLflow exports the model with torch.export, whose tracer intercepts every module
        # call in the process while it runs, so nothing else may run the model meanwhile.
        run.log_model(kept, example, config.name, params.epochs, content)
        run.wait()  # outputs only once MLflow holds everything the run logged
        inputs.verify()
        weights_file.write_bytes(content)
        history_file.write_text(history_csv(fitted.history), encoding="utf-8")
        logits_file.write_bytes(logits_bytes(fitted.held_out_logits.cpu().numpy()))
    return fitted.history
