"""The per-epoch metrics registry: what `fit` measures after every epoch, one name each, read by
every sink: MLflow (step = epoch), history.csv (the DVC plots), the sweep's trials and reports,
and compare's table and curves.

The held-out accuracy is named after its split (`held_out_acc`): `test_acc` in the pipeline,
`val_acc` in the sweep, which never looks at the test split while choosing. Each epoch's
wall-clock seconds go to MLflow only (EPOCH_SECONDS): no file keeps them, since they differ on
every run. Standard library only: torch-free stages read it.
"""

from dataclasses import dataclass

EPOCH = "epoch"
TRAIN_LOSS, TRAIN_ACC, LR = "train_loss", "train_acc", "lr"
EPOCH_SECONDS = "epoch_seconds"
HELD_OUT = "{split}_acc"


@dataclass(frozen=True)
class EpochMetric:
    label: str  # in tables and on plots
    curve: bool  # one of compare's learning curves


# Name -> what it is; HELD_OUT stands for the held-out split's accuracy.
EPOCH_METRICS = {
    TRAIN_LOSS: EpochMetric("train loss", curve=True),
    TRAIN_ACC: EpochMetric("train accuracy", curve=True),
    HELD_OUT: EpochMetric("{split} accuracy", curve=True),
    LR: EpochMetric("learning rate", curve=False),
}
EpochMetrics = dict[str, float]  # EPOCH, the registry's names and EPOCH_SECONDS


def held_out_acc(split: str) -> str:
    """The held-out accuracy's name for `split`: test_acc, val_acc."""
    return HELD_OUT.format(split=split)


def epoch_keys(split: str) -> tuple[str, ...]:
    """The registry's names, with the held-out accuracy named for `split`: what history.csv
    keeps after `epoch`, in order."""
    return tuple(name.format(split=split) for name in EPOCH_METRICS)


def curves(split: str) -> dict[str, str]:
    """Name -> label of the metrics compare draws, for `split`."""
    return {
        name.format(split=split): metric.label.format(split=split)
        for name, metric in EPOCH_METRICS.items()
        if metric.curve
    }
