"""The optimizer and learning-rate schedule registries: the code behind each name of choices.py.

Adding an optimizer is its name in choices.OPTIMIZERS and one entry in BUILDERS (a schedule: a
name in choices.SCHEDULES and one entry in SCHEDULE_FACTORS); a registry without code for an
accepted name refuses to import. Only the trainings run this module, so editing it reruns only
them. torch is imported inside the builders.

The learning rate of every step comes from one `torch.optim.lr_scheduler.LambdaLR`, stepped
after each optimizer step: a linear warm-up over `warmup_epochs` (step by step), then the
schedule, which changes the rate once per epoch (mlp_best's recipe was searched with a cosine
decay stepped per epoch).
"""

import math
from collections.abc import Callable, Iterable
from typing import Any

from fashion_mlp.choices import OPTIMIZERS, SCHEDULES, check_registry
from fashion_mlp.params import TrainParams


def _sgd(parameters: Iterable[Any], params: TrainParams) -> Any:
    import torch

    return torch.optim.SGD(
        parameters, lr=params.lr, momentum=params.momentum, weight_decay=params.weight_decay
    )


def _adam(parameters: Iterable[Any], params: TrainParams) -> Any:
    import torch

    # Fused: the unfused update calls torch.sqrt, which MKL's vector math computes with code
    # chosen per CPU model; the fused kernel is torch's own, whose square root is the correctly
    # rounded instruction, the same bits on every CPU (docs/numerics.md). AdamW's too.
    return torch.optim.Adam(parameters, lr=params.lr, weight_decay=params.weight_decay, fused=True)


def _adamw(parameters: Iterable[Any], params: TrainParams) -> Any:
    import torch

    return torch.optim.AdamW(parameters, lr=params.lr, weight_decay=params.weight_decay, fused=True)


# Name in params.yaml -> builder(model parameters, train params) -> torch.optim.Optimizer.
# `momentum` is read by SGD only (params.yaml says so).
BUILDERS: dict[str, Callable[[Iterable[Any], TrainParams], Any]] = {
    "sgd": _sgd,
    "adam": _adam,
    "adamw": _adamw,
}
check_registry("optimizers.BUILDERS", OPTIMIZERS, BUILDERS)


def _constant(epoch: int, epochs: int) -> float:
    return 1.0


def _cosine(epoch: int, epochs: int) -> float:
    """From the full rate in the first epoch towards zero after the last one."""
    return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


# Name in params.yaml -> factor(epoch after warm-up, counted from 0; epochs after warm-up).
SCHEDULE_FACTORS: dict[str, Callable[[int, int], float]] = {
    "constant": _constant,
    "cosine": _cosine,
}
check_registry("optimizers.SCHEDULE_FACTORS", SCHEDULES, SCHEDULE_FACTORS)


def make_optimizer(model: Any, params: TrainParams) -> Any:
    return BUILDERS[params.optimizer](model.parameters(), params)


def rate_factor(params: TrainParams, steps_per_epoch: int) -> Callable[[int], float]:
    """The factor on `params.lr` for the step after `steps` steps: warm-up, then the schedule."""
    warmup_steps = params.warmup_epochs * steps_per_epoch
    decay_epochs = max(1, params.epochs - params.warmup_epochs)
    schedule = SCHEDULE_FACTORS[params.lr_schedule]

    def factor(steps: int) -> float:
        if steps < warmup_steps:
            return (steps + 1) / warmup_steps
        return schedule(steps // steps_per_epoch - params.warmup_epochs, decay_epochs)

    return factor


def make_rate_schedule(optimizer: Any, params: TrainParams, steps_per_epoch: int) -> Any:
    """The per-step LambdaLR; call its `step()` after every optimizer step."""
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, rate_factor(params, steps_per_epoch))
