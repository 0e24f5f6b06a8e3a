"""The sweep's section of params.yaml (its schema and search-space grammar), and the trials'
configurations drawn from `sweep.space` with `sweep.seed`.

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
from typing import Annotated, Any

from pydantic import Discriminator, Field, Tag, model_validator

from fashion_mlp.params import (
    MAX_EPOCHS,
    MAX_IMAGES_IN_SPLIT,
    MAX_SEED,
    MODEL_NAME,
    Params,
    RunConfig,
    Section,
    finite,
)


class AshaParams(Section):
    """Ray Tune's ASHA scheduler: every trial runs `grace_period` epochs; then at each rung only
    the best 1/`reduction_factor` of the trials that reached it go on."""

    grace_period: int = Field(ge=1, le=MAX_EPOCHS)
    reduction_factor: float = finite(gt=1)


class Choice(Section):
    """Draw one of the values."""

    choice: list[Any] = Field(min_length=1)


class Grid(Section):
    """Every value, crossed with the other grid keys; each point gets `sweep.trials` draws."""

    grid: list[Any] = Field(min_length=1)


class _Range(Section):
    @property
    def bounds(self) -> tuple[Any, Any]:
        low, high = next(iter(self.model_dump().values()))
        return low, high

    @model_validator(mode="after")
    def _ordered(self) -> "_Range":
        low, high = self.bounds
        if not low < high:
            raise ValueError(f"expected [low, high] with low < high, got [{low}, {high}]")
        return self


def _pair() -> Any:
    return Field(min_length=2, max_length=2)


class Uniform(_Range):
    uniform: list[Annotated[float, Field(allow_inf_nan=False)]] = _pair()


class LogUniform(_Range):
    loguniform: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]] = _pair()


class RandInt(_Range):
    randint: list[int] = _pair()


def _space_kind(value: Any) -> str | None:
    """The one key of a search-space entry, e.g. 'choice' for {choice: [...]}."""
    if isinstance(value, dict) and len(value) == 1:
        return next(iter(value))
    return None


SpaceEntry = Annotated[
    Annotated[Choice, Tag("choice")]
    | Annotated[Grid, Tag("grid")]
    | Annotated[Uniform, Tag("uniform")]
    | Annotated[LogUniform, Tag("loguniform")]
    | Annotated[RandInt, Tag("randint")],
    Discriminator(
        _space_kind,
        custom_error_type="space_kind",
        custom_error_message="expected one of choice, grid, uniform, loguniform, randint with "
        "its values, e.g. {loguniform: [0.001, 0.1]}",
    ),
]
# A `space` key whose values are whole mappings of keys to set together (an ablation's rows).
VARIANT = "variant"


class SweepParams(Section):
    """A hyperparameter search on Ray Tune (see sweep/). `base` is a model entry (like those
    under `models`) that every trial starts from; `space` draws the keys it varies."""

    name: str = Field(pattern=MODEL_NAME.pattern)
    trials: int = Field(ge=1, le=1000)
    seed: int = Field(ge=0, le=MAX_SEED)
    validation_size: int = Field(ge=1, le=MAX_IMAGES_IN_SPLIT)
    max_concurrent_trials: int = Field(ge=1, le=1024)
    cpus_per_trial: int = Field(ge=1, le=1024)
    scheduler: AshaParams
    base: dict[str, Any]
    space: dict[str, SpaceEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _variants_are_mappings(self) -> "SweepParams":
        variant = self.space.get(VARIANT)
        values = getattr(variant, "choice", None) or getattr(variant, "grid", None) or []
        if variant is not None and not (
            isinstance(variant, Choice | Grid) and all(isinstance(v, dict) for v in values)
        ):
            raise ValueError(
                f"space.{VARIANT}: expected choice or grid of mappings of keys to set together"
            )
        return self


def sweep_params(params: Params) -> SweepParams:
    """The validated `sweep` section."""
    return params.section("sweep", SweepParams)


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
    sweep = sweep_params(params)
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
