"""Typed, validated view of `params.yaml`: the one place that reads it.

Each section is validated the first time a stage asks for it, before the stage does any work, so
a stage needs (and DVC tracks) only the sections that `dvc.yaml` declares for it. A bad value
stops the stage with one line naming the file, the key and the value, e.g.

    params.yaml: models.mlp2.lr = -0.1: Input should be greater than 0

Every key is required: a default hidden in code would be a setting that DVC cannot see.
"""

import difflib
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
)

from fashion_mlp.errors import PipelineError

MODEL_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
Activation = Literal["relu", "sigmoid", "tanh"]
MD5 = re.compile(r"^[0-9a-f]{32}$")


class _Section(BaseModel):
    # strict: YAML already yields typed values, so "0.1" (a string) or `true` for an int is a typo.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class RawChecksums(_Section):
    """MD5 of each file's *decompressed* content (gzip bytes differ between mirrors)."""

    train_images: str = Field(pattern=MD5.pattern)
    train_labels: str = Field(pattern=MD5.pattern)
    test_images: str = Field(pattern=MD5.pattern)
    test_labels: str = Field(pattern=MD5.pattern)


class DataParams(_Section):
    local_dir: str
    urls: list[str]
    md5: RawChecksums


class TrainParams(_Section):
    epochs: PositiveInt
    batch_size: PositiveInt
    lr: PositiveFloat
    optimizer: Literal["sgd", "adam"]
    momentum: NonNegativeFloat = Field(lt=1)
    weight_decay: NonNegativeFloat
    lr_schedule: Literal["constant", "cosine"]
    init_std: PositiveFloat
    seed: NonNegativeInt
    device: Literal["auto", "cpu", "cuda"]


class ModelSpec(_Section):
    """The architecture: everything needed to rebuild the network (saved in its checkpoint)."""

    hidden: list[PositiveInt] = Field(min_length=1)
    activation: Activation
    # Optional, unlike every other key: the d2l nets have none, and they stay two-key entries.
    dropout: NonNegativeFloat = Field(0.0, lt=1)

    def describe(self) -> str:
        """Layer widths and activation, e.g. '784-256-128-10 relu' (+ dropout if any)."""
        widths = "-".join(map(str, [28 * 28, *self.hidden, 10])) + f" {self.activation}"
        return widths + (f" dropout {self.dropout:g}" if self.dropout else "")


class MlflowParams(_Section):
    experiment: str = Field(min_length=1)
    tracking_uri: str = Field(min_length=1)


@dataclass(frozen=True)
class RunConfig:
    """What one model's training run uses: its architecture and its effective train params
    (the `train` section with the model's own overrides applied)."""

    name: str
    model: ModelSpec
    train: TrainParams

    def flat(self) -> dict[str, Any]:
        """Every effective param as one flat mapping, as MLflow records them."""
        hidden = ",".join(str(width) for width in self.model.hidden)
        architecture = {"hidden": hidden, "activation": self.model.activation}
        return {"model": self.name, **architecture, "dropout": self.model.dropout} | (
            self.train.model_dump()
        )


SECTIONS = ("data", "train", "models", "mlflow")
ARCH_KEYS = frozenset(ModelSpec.model_fields)


class Params:
    """Sections of one params file, each validated on first use."""

    def __init__(self, raw: dict[str, Any], source: Path):
        self.source = source
        self._raw = raw
        unknown = sorted(set(raw) - set(SECTIONS))
        if unknown:
            raise PipelineError(
                f"{source}: unknown section {unknown[0]!r}; expected one of {', '.join(SECTIONS)}"
            )

    def _section(self, key: str) -> Any:
        if key not in self._raw:
            raise PipelineError(f"{self.source}: missing section {key!r}")
        return self._raw[key]

    def _validate(self, schema: type[BaseModel], value: Any, where: str) -> Any:
        try:
            return schema.model_validate(value)
        except ValidationError as err:
            raise PipelineError(_one_line(err, self.source, where)) from None

    @cached_property
    def data(self) -> DataParams:
        return self._validate(DataParams, self._section("data"), "data")

    @cached_property
    def train(self) -> TrainParams:
        return self._validate(TrainParams, self._section("train"), "train")

    @cached_property
    def mlflow(self) -> MlflowParams:
        return self._validate(MlflowParams, self._section("mlflow"), "mlflow")

    @cached_property
    def model_names(self) -> list[str]:
        models = self._section("models")
        if not isinstance(models, dict) or not models:
            raise PipelineError(f"{self.source}: models must map model names to architectures")
        for name in models:
            if not isinstance(name, str) or not MODEL_NAME.match(name):
                raise PipelineError(
                    f"{self.source}: models.{name}: model names may use only letters, digits, "
                    "'_' and '-' (they become file and stage names)"
                )
        return list(models)

    def run_config(self, name: str) -> RunConfig:
        """The validated config of model `name`; unknown names are refused, listing the known."""
        if name not in self.model_names:
            raise PipelineError(
                f"{self.source}: no model {name!r} under models; "
                f"known: {', '.join(self.model_names)}"
            )
        entry = self._raw["models"][name]
        where = f"models.{name}"
        if not isinstance(entry, dict):
            raise PipelineError(f"{self.source}: {where} = {entry!r}: expected a mapping")
        arch = {key: value for key, value in entry.items() if key in ARCH_KEYS}
        overrides = {key: value for key, value in entry.items() if key not in ARCH_KEYS}
        model = self._validate(ModelSpec, arch, where)
        train_raw = self._section("train")
        if not isinstance(train_raw, dict):
            raise PipelineError(f"{self.source}: train = {train_raw!r}: expected a mapping")
        try:
            train = TrainParams.model_validate(train_raw | overrides)
        except ValidationError as err:
            # Name the key where it is written: the model's override, or the shared section.
            key = err.errors()[0]["loc"][0]
            raise PipelineError(
                _one_line(err, self.source, where if key in overrides else "train")
            ) from None
        return RunConfig(name=name, model=model, train=train)

    def run_configs(self) -> list[RunConfig]:
        return [self.run_config(name) for name in self.model_names]


def load_params(path: Path) -> Params:
    """Read `path` (YAML). A missing or unparsable file is a PipelineError naming it."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path}: params file not found") from None
    except yaml.YAMLError as err:
        raise PipelineError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise PipelineError(f"{path}: expected a mapping of sections ({', '.join(SECTIONS)})")
    return Params(raw, path)


def _one_line(err: ValidationError, source: Path, where: str) -> str:
    errors = err.errors()
    # A typo'd key is both unknown and leaves the real key missing: name the typo.
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    key = ".".join([where, *(str(part) for part in first["loc"])])
    if first["type"] == "missing":
        message = f"{source}: {key}: missing (every key is required)"
    elif first["type"] == "extra_forbidden":
        known = [*TrainParams.model_fields, *ModelSpec.model_fields]
        guess = difflib.get_close_matches(str(first["loc"][-1]), known, n=1)
        hint = f" (did you mean {guess[0]!r}?)" if guess else ""
        message = f"{source}: {key} = {first['input']!r}: unknown key{hint}"
    else:
        message = f"{source}: {key} = {first['input']!r}: {first['msg']}"
    more = len(errors) - 1
    return message + (f" (and {more} more)" if more else "")
