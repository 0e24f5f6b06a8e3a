"""What a training prints: one line per epoch, and on a terminal two live bars.

The epoch lines are plain text on stdout (no log levels or source locations). The bars (epochs,
and batches in the current epoch) are drawn only when stdout is a terminal and progress is on:
in a log file a live display leaves half-drawn frames behind.
"""

import sys
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any


class EpochProgress:
    def __init__(self, name: str, epochs: int, steps_per_epoch: int, show_bars: bool = True):
        self.name, self.epochs, self.steps = name, epochs, steps_per_epoch
        self._bars: Any = None
        if show_bars and sys.stdout.isatty():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._bars = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                transient=True,
            )
            self._epoch_task = self._bars.add_task(f"{name} epochs", total=epochs)
            self._batch_task = self._bars.add_task("batches", total=steps_per_epoch)

    def __enter__(self) -> "EpochProgress":
        if self._bars is not None:
            self._bars.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._bars is not None:
            self._bars.stop()

    def batch_done(self) -> None:
        if self._bars is not None:
            self._bars.advance(self._batch_task)

    def epoch_done(self, metrics: Mapping[str, float], keys: Sequence[str]) -> None:
        summary = "  ".join(f"{key} {metrics[key]:.4f}" for key in keys if key in metrics)
        line = f"{self.name} epoch {int(metrics['epoch'])}/{self.epochs}: {summary}"
        if self._bars is not None:
            self._bars.console.print(line, highlight=False, markup=False)
            self._bars.advance(self._epoch_task)
            self._bars.reset(self._batch_task)
        else:
            print(line, flush=True)
