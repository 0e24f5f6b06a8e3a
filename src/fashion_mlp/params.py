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
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fashion_mlp.errors import PipelineError

# Model names become folder, file, stage and MLflow run names and command-line arguments: no
# leading '-' (an option) or '.', no trailing newline (`\Z`, not `$`), short enough for a path.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
# The names nonlinearities.ACTIVATIONS builds (a test checks the two agree).
Activation = Literal["relu", "sigmoid", "tanh", "gelu", "elu"]
MD5 = re.compile(r"^[0-9a-f]{32}\Z")
# Bounds that keep every accepted value usable by torch and by the machine: an integer past
# these fails deep inside torch (or allocates forever) instead of here, with a name.
MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 1_000_000
MAX_WIDTH = 65_536
MAX_SEED = 2**63 - 1
MAX_IMAGES_IN_SPLIT = 100_000


class _Section(BaseModel):
    # strict: YAML already yields typed values, so "0.1" (a string) or `true` for an int is a typo.
    # python-re: the patterns below end in `\Z` (a `$` would accept a trailing newline).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, regex_engine="python-re")


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


def _finite(**bounds: float) -> Any:
    return Field(allow_inf_nan=False, **bounds)


class TrainParams(_Section):
    """How a model is trained. Every key is shared by all models unless an entry overrides it;
    the options after `device` are off at their neutral values (0, false), where training is
    bit-for-bit what it was before they existed."""

    epochs: int = Field(gt=0, le=MAX_EPOCHS)
    batch_size: int = Field(gt=0, le=MAX_BATCH_SIZE)
    lr: float = _finite(gt=0)
    optimizer: Literal["sgd", "adam", "adamw"]
    momentum: float = _finite(ge=0, lt=1)
    weight_decay: float = _finite(ge=0)
    lr_schedule: Literal["constant", "cosine"]
    init_std: float = _finite(gt=0)
    seed: int = Field(ge=0, le=MAX_SEED)
    device: Literal["auto", "cpu", "cuda"]
    dropout: float = _finite(ge=0, lt=1)
    batch_norm: bool
    warmup_epochs: int = Field(ge=0, le=MAX_EPOCHS)
    label_smoothing: float = _finite(ge=0, lt=1)
    ema_decay: float = _finite(ge=0, lt=1)
    augment_shift: int = Field(ge=0, le=8)
    augment_flip: bool

    @model_validator(mode="after")
    def _warmup_within_training(self) -> "TrainParams":
        if self.warmup_epochs > self.epochs:
            raise ValueError(
                f"warmup_epochs = {self.warmup_epochs} is longer than epochs = {self.epochs}"
            )
        return self


class ModelSpec(_Section):
    """The architecture: everything needed to rebuild the network (saved in its checkpoint)."""

    hidden: list[Annotated[int, Field(gt=0, le=MAX_WIDTH)]] = Field(min_length=1, max_length=64)
    activation: Activation
    dropout: float = _finite(ge=0, lt=1)
    batch_norm: bool

    def describe(self) -> str:
        """Layer widths and activation, e.g. '784-256-128-10 relu' (+ dropout, batch norm)."""
        widths = "-".join(map(str, [28 * 28, *self.hidden, 10])) + f" {self.activation}"
        extras = [f"dropout {self.dropout:g}"] * bool(self.dropout)
        return " ".join([widths, *extras, *["batchnorm"] * self.batch_norm])


class MlflowParams(_Section):
    experiment: str = Field(min_length=1)
    tracking_uri: str = Field(min_length=1)
    champion: str = Field(pattern=MODEL_NAME.pattern)


class AshaParams(_Section):
    """Ray Tune's ASHA scheduler: every trial runs `grace_period` epochs; then at each rung only
    the best 1/`reduction_factor` of the trials that reached it go on."""

    grace_period: int = Field(ge=1, le=MAX_EPOCHS)
    reduction_factor: float = _finite(gt=1)


class SweepParams(_Section):
    """A hyperparameter search on Ray Tune (see sweep.py). `base` is a model entry (like those
    under `models`) that every trial starts from; `space` draws the keys it varies."""

    name: str = Field(pattern=MODEL_NAME.pattern)
    trials: int = Field(ge=1, le=10_000)
    seed: int = Field(ge=0, le=MAX_SEED)
    validation_size: int = Field(ge=1, le=MAX_IMAGES_IN_SPLIT)
    max_concurrent_trials: int = Field(ge=1, le=10_000)
    cpus_per_trial: int = Field(ge=1, le=1024)
    scheduler: AshaParams
    base: dict[str, Any]
    space: dict[str, dict[str, list[Any]]]


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
        return {"model": self.name, **architecture} | self.train.model_dump()


SECTIONS = ("data", "train", "models", "mlflow", "sweep")
# A model entry must name these; every other key of an entry overrides the `train` section.
ARCH_KEYS = frozenset({"hidden", "activation"})


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
    def sweep(self) -> SweepParams:
        return self._validate(SweepParams, self._section("sweep"), "sweep")

    @cached_property
    def model_names(self) -> list[str]:
        models = self._section("models")
        if not isinstance(models, dict) or not models:
            raise PipelineError(f"{self.source}: models must map model names to architectures")
        for name in models:
            if not isinstance(name, str) or not MODEL_NAME.match(name):
                raise PipelineError(
                    f"{self.source}: models.{name!r}: a model name is 1 to 64 letters, digits, "
                    "'_' and '-', starting with a letter or digit (it becomes a folder, a file, "
                    "a stage and a command-line argument)"
                )
        return list(models)

    def run_config(self, name: str) -> RunConfig:
        """The validated config of model `name`; unknown names are refused, listing the known."""
        if name not in self.model_names:
            raise PipelineError(
                f"{self.source}: no model {name!r} under models; "
                f"known: {', '.join(self.model_names)}"
            )
        return self.entry_config(name, self._raw["models"][name], f"models.{name}")

    def entry_config(self, name: str, entry: Any, where: str) -> RunConfig:
        """A model entry (hidden, activation, any `train` key) merged onto the `train` section
        and validated; errors name `where` the offending key is written."""
        if not isinstance(entry, dict):
            raise PipelineError(f"{self.source}: {where} = {entry!r}: expected a mapping")
        arch = {key: value for key, value in entry.items() if key in ARCH_KEYS}
        overrides = {key: value for key, value in entry.items() if key not in ARCH_KEYS}
        train_raw = self._section("train")
        if not isinstance(train_raw, dict):
            raise PipelineError(f"{self.source}: train = {train_raw!r}: expected a mapping")
        try:
            train = TrainParams.model_validate(train_raw | overrides)
        except ValidationError as err:
            # Name the key where it is written: the model's override, or the shared section.
            loc = err.errors()[0]["loc"]
            # A rule across keys (no loc) involves the entry whenever it overrides any key.
            in_entry = loc[0] in overrides if loc else bool(overrides)
            written_in = where if in_entry else "train"
            raise PipelineError(_one_line(err, self.source, written_in)) from None
        shared = {key: getattr(train, key) for key in ModelSpec.model_fields if key not in arch}
        model = self._validate(ModelSpec, arch | shared, where)
        return RunConfig(name=name, model=model, train=train)

    def run_configs(self) -> list[RunConfig]:
        return [self.run_config(name) for name in self.model_names]


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key written twice in one mapping. Plain YAML keeps the last value
    silently (DVC refuses such a file), so `lr: 0.1` ... `lr: 50.0` would train with 50."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} appears twice (lines {seen[key]} and {line}); keep one",
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_params(path: Path) -> Params:
    """Read `path` (YAML). A missing or unparsable file is a PipelineError naming it."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except FileNotFoundError:
        raise PipelineError(f"{path}: params file not found") from None
    except IsADirectoryError:
        raise PipelineError(f"{path}: is a folder; pass the params file itself") from None
    except UnicodeDecodeError as err:
        raise PipelineError(
            f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); save it as UTF-8"
        ) from None
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark and "appears twice" not in problem else ""
        raise PipelineError(f"{path}: not valid YAML ({problem}{where})") from None
    if not isinstance(raw, dict):
        raise PipelineError(f"{path}: expected a mapping of sections ({', '.join(SECTIONS)})")
    return Params(raw, path)


def _one_line(err: ValidationError, source: Path, where: str) -> str:
    errors = err.errors()
    # A typo'd key is both unknown and leaves the real key missing: name the typo.
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    key = ".".join([where, *(str(part) for part in first["loc"])])
    if not first["loc"]:  # a rule across keys, e.g. warmup_epochs <= epochs
        message = f"{source}: {key}: {first['msg'].removeprefix('Value error, ')}"
    elif first["type"] == "missing":
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
