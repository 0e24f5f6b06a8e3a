"""The trials' configurations, drawn from params `sweep.space` with `sweep.seed`.

The same seed gives the same trials, in the same order, on every machine. `grid` keys are
crossed with each other and each grid point gets `sweep.trials` random draws of the other keys;
the key `variant` sets whole mappings of keys together (an ablation's rows), over anything drawn
for them. Every trial's entry is validated like a `models` entry, before Ray starts.
"""

import itertools
import json
import math
import random
from dataclasses import dataclass
from typing import Any

from fashion_mlp.params import (
    VARIANT,
    Choice,
    Grid,
    LogUniform,
    Params,
    RandInt,
    RunConfig,
    SpaceEntry,
    Uniform,
)


@dataclass(frozen=True)
class TrialPlan:
    """One trial: what was drawn for it and the full, validated configuration it trains."""

    index: int
    sampled: dict[str, Any]
    entry: dict[str, Any]  # a `models` entry: base, then the drawn values
    config: RunConfig

    def effective(self, key: str) -> Any:
        """The value the trial trains with for a drawn key (a variant may have set it)."""
        return self.sampled[key] if key == VARIANT else self.entry.get(key, self.sampled.get(key))


def trial_name(sweep_name: str, index: int) -> str:
    return f"{sweep_name}-{index}"


def plan_trials(params: Params) -> list[TrialPlan]:
    sweep = params.sweep
    draw = random.Random(sweep.seed)
    grid_keys = [key for key, entry in sweep.space.items() if isinstance(entry, Grid)]
    grid = list(itertools.product(*(sweep.space[key].grid for key in grid_keys)))
    plans = []
    for _ in range(sweep.trials):
        for point in grid:
            sampled = dict(zip(grid_keys, point, strict=True))
            for key, entry in sweep.space.items():
                if key not in sampled:
                    sampled[key] = _draw(draw, entry)
            chosen = {key: value for key, value in sampled.items() if key != VARIANT}
            entry = dict(sweep.base) | chosen | sampled.get(VARIANT, {})
            index = len(plans)
            where = f"sweep (trial {index}: {json.dumps(sampled)[:200]})"
            config = params.entry_config(trial_name(sweep.name, index), entry, where)
            plans.append(TrialPlan(index, sampled, entry, config))
    return plans


def _draw(draw: random.Random, entry: SpaceEntry) -> Any:
    if isinstance(entry, Choice):
        return entry.choice[draw.randrange(len(entry.choice))]
    if isinstance(entry, RandInt):
        return draw.randint(*entry.bounds)
    low, high = entry.bounds
    if isinstance(entry, Uniform):
        value = draw.uniform(low, high)
    else:
        assert isinstance(entry, LogUniform)
        value = math.exp(draw.uniform(math.log(low), math.log(high)))
    return float(f"{value:.4g}")  # four significant digits: a value people can paste
