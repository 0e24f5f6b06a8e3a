"""Typed, validated view of `params.yaml`: the one place that reads it.

Each part is validated the first time a stage asks for it, before the stage does any work, so a
stage needs only the keys it reads. A bad value stops the stage with one line naming the file,
the key and the value, e.g.

    params.yaml: models.mlp2.lr = -0.1: Input should be greater than 0

Every key is required: a default hidden in code would be a setting that DVC cannot see.

The file is read by documents.py, the way DVC reads it (YAML 1.2). `Params.reads` records every
leaf key a stage took: tests/test_params_declared.py compares it with the params that dvc.yaml
declares for the stage. The names that pick code (activation, optimizer, lr_schedule) come from
choices.py; the sweep's section is validated by sweep/space.py, which owns its grammar.
"""

import difflib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fashion_mlp import choices
from fashion_mlp.dataset import IN_FEATURES, NUM_CLASSES
from fashion_mlp.documents import parse_yaml, read_text, shown
from fashion_mlp.errors import PipelineError

# Model names become folder, file, stage and MLflow names and command-line arguments: no
# leading '-' (an option) or '.', no trailing newline (`\Z`, not `$`), short enough for a path.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
MD5 = re.compile(r"^[0-9a-f]{32}\Z")
# The names each registry builds (choices.py): a name params.yaml accepts always has code.
Activation = Literal[choices.ACTIVATIONS]  # type: ignore[valid-type]
Optimizer = Literal[choices.OPTIMIZERS]  # type: ignore[valid-type]
Schedule = Literal[choices.SCHEDULES]  # type: ignore[valid-type]
Numerics = Literal[choices.NUMERICS]  # type: ignore[valid-type]
# Bounds that keep every accepted value usable by torch and by the machine: an integer past
# these fails deep inside torch (or allocates forever) instead of here, with a name.
MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 1_000_000
MAX_WIDTH = 65_536
MAX_SEED = 2**63 - 1
MAX_IMAGES_IN_SPLIT = 100_000
# A params file is a page of settings: a bound on its size keeps a malformed or hostile file
# from costing minutes and gigabytes (documents.py bounds what its aliases expand to).
MAX_FILE_BYTES = 1_000_000


class Section(BaseModel):
    """A params section's schema: every key required, no unknown key, no coerced type."""

    # strict: YAML already yields typed values, so "0.1" (a string) or `true` for an int is a typo.
    # python-re: the patterns below end in `\Z` (a `$` would accept a trailing newline).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, regex_engine="python-re")


class RawChecksums(Section):
    """MD5 of each file's *decompressed* content (gzip bytes differ between mirrors)."""

    train_images: str = Field(pattern=MD5.pattern)
    train_labels: str = Field(pattern=MD5.pattern)
    test_images: str = Field(pattern=MD5.pattern)
    test_labels: str = Field(pattern=MD5.pattern)


class DataParams(Section):
    local_dir: str
    urls: list[str]
    md5: RawChecksums


def finite(**bounds: float) -> Any:
    return Field(allow_inf_nan=False, **bounds)


class TrainParams(Section):
    """How a model is trained. The options after `numerics` are off at their neutral values (0,
    false), where training is bit-for-bit what it was before they existed."""

    epochs: int = Field(gt=0, le=MAX_EPOCHS)
    batch_size: int = Field(gt=0, le=MAX_BATCH_SIZE)
    lr: float = finite(gt=0)
    optimizer: Optimizer
    momentum: float = finite(ge=0, lt=1)
    weight_decay: float = finite(ge=0)
    lr_schedule: Schedule
    init_std: float = finite(gt=0)
    seed: int = Field(ge=0, le=MAX_SEED)
    device: Literal["auto", "cpu", "cuda"]
    numerics: Numerics
    warmup_epochs: int = Field(ge=0, le=MAX_EPOCHS)
    label_smoothing: float = finite(ge=0, lt=1)
    ema_decay: float = finite(ge=0, lt=1)
    augment_shift: int = Field(ge=0, le=8)
    augment_flip: bool

    @model_validator(mode="after")
    def _warmup_within_training(self) -> "TrainParams":
        if self.warmup_epochs > self.epochs:
            raise ValueError(
                f"warmup_epochs = {self.warmup_epochs} is longer than epochs = {self.epochs}"
            )
        return self


class ModelSpec(Section):
    """The architecture: everything needed to rebuild the network (saved in its checkpoint)."""

    hidden: list[Annotated[int, Field(gt=0, le=MAX_WIDTH)]] = Field(min_length=1, max_length=64)
    activation: Activation
    dropout: float = finite(ge=0, lt=1)
    batch_norm: bool

    def describe(self) -> str:
        """Layer widths and activation, e.g. '784-256-128-10 relu' (+ dropout, batch norm)."""
        widths = "-".join(map(str, [IN_FEATURES, *self.hidden, NUM_CLASSES]))
        widths += f" {self.activation}"
        extras = [f"dropout {self.dropout:g}"] * bool(self.dropout)
        return " ".join([widths, *extras, *["batchnorm"] * self.batch_norm])


# A model entry names these; the `train` section may set the other architecture keys for every
# model, and an entry may override any key of `train`.
ENTRY_KEYS = frozenset({"hidden", "activation"})
TRAIN_SECTION_KEYS = (*TrainParams.model_fields, *(set(ModelSpec.model_fields) - ENTRY_KEYS))


# Where runs are recorded, not what is computed: no stage declares these in dvc.yaml, so changing
# them reruns nothing, exactly as setting MLFLOW_TRACKING_URI does not (README "Tracking").
RECORDING_KEYS = ("mlflow.experiment", "mlflow.tracking_uri")


class TrackingSettings(Section):
    experiment: str = Field(min_length=1, max_length=256)
    tracking_uri: str = Field(min_length=1, max_length=4096)


@dataclass(frozen=True)
class RunConfig:
    """What one model's training uses: its architecture and its effective train params (the
    `train` section with the model's own entry applied). `configure` writes one per model."""

    name: str
    model: ModelSpec
    train: TrainParams

    def flat(self) -> dict[str, Any]:
        """Every effective param as one flat mapping, as MLflow records them."""
        architecture = self.model.model_dump() | {"hidden": ",".join(map(str, self.model.hidden))}
        return {"model": self.name, **architecture, **self.train.model_dump()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model.model_dump(),
            "train": self.train.model_dump(),
        }


SECTIONS = ("data", "train", "models", "mlflow", "sweep")
# The keys each section may hold (models' entries are checked when a model is configured).
KNOWN_KEYS = {
    "data": set(DataParams.model_fields),
    "train": set(TRAIN_SECTION_KEYS),
    "mlflow": {*TrackingSettings.model_fields, "champion", "champion_min_test_acc"},
}


class Params:
    """The parts of one params file, each validated when a stage takes it. `reads` is every
    leaf key taken so far, e.g. {'mlflow.champion'}."""

    def __init__(self, raw: dict[str, Any], source: Path):
        self.source = source
        self._raw = raw
        self.reads: set[str] = set()
        unknown = sorted(set(raw) - set(SECTIONS), key=str)
        if unknown:
            raise PipelineError(
                f"{source}: unknown section {shown(unknown[0])}; expected one of "
                f"{', '.join(SECTIONS)}"
            )
        for section, known in KNOWN_KEYS.items():
            values = raw.get(section)
            for key in sorted(set(values) - known, key=str) if isinstance(values, dict) else []:
                raise PipelineError(self._unknown_key(section, key, values[key]))

    def _unknown_key(self, where: str, key: Any, value: Any) -> str:
        """A key no stage reads: named with a close match, checked in every stage (a typo in a
        section one stage reads must not pass in the others)."""
        known = sorted(KNOWN_KEYS.get(where, set(TRAIN_SECTION_KEYS) | ENTRY_KEYS))
        guess = difflib.get_close_matches(str(key), known, n=1)
        hint = f" (did you mean {guess[0]!r}?)" if guess else ""
        return f"{self.source}: {where}.{key} = {shown(value)}: unknown key{hint}"

    def _take(self, *path: str) -> Any:
        """The raw value at `path`, recording each leaf under it as read."""
        value: Any = self._raw
        for depth, part in enumerate(path):
            if not isinstance(value, dict):
                where = ".".join(path[:depth])
                raise PipelineError(f"{self.source}: {where} = {shown(value)}: expected a mapping")
            if part not in value:
                where = ".".join(path[: depth + 1])
                what = "section" if depth == 0 else "key"
                raise PipelineError(f"{self.source}: missing {what} {where!r}")
            value = value[part]
        self.reads |= set(_leaves(".".join(path), value))
        return value

    def _validate(self, schema: type[BaseModel], value: Any, where: str) -> Any:
        try:
            return schema.model_validate(value)
        except ValidationError as err:
            raise PipelineError(_one_line(err, self.source, where)) from None

    @property
    def data(self) -> DataParams:
        return self._validate(DataParams, self._take("data"), "data")

    @property
    def tracking(self) -> TrackingSettings:
        """Where runs are recorded (mlflow.experiment, mlflow.tracking_uri)."""
        settings = {key: self._take("mlflow", key) for key in TrackingSettings.model_fields}
        return self._validate(TrackingSettings, settings, "mlflow")

    @property
    def champion_min_test_acc(self) -> float:
        """mlflow.champion_min_test_acc: `register` refuses a champion tested below it."""
        floor = self._take("mlflow", "champion_min_test_acc")
        if isinstance(floor, bool) or not isinstance(floor, int | float) or not 0 <= floor <= 1:
            raise PipelineError(
                f"{self.source}: mlflow.champion_min_test_acc = {shown(floor)}: expected a test "
                "accuracy between 0 and 1 (e.g. 0.5)"
            )
        return float(floor)

    @property
    def champion(self) -> str:
        """mlflow.champion: the model the registry's `champion` alias points at."""
        name = self._take("mlflow", "champion")
        if not isinstance(name, str) or not MODEL_NAME.match(name):
            raise PipelineError(
                f"{self.source}: mlflow.champion = {shown(name)}: expected a model name"
            )
        return name

    def section(self, name: str, schema: type[BaseModel]) -> Any:
        """Section `name` validated by `schema`: for a section whose schema lives with the code
        that reads it (the sweep's: sweep/space.py)."""
        return self._validate(schema, self._take(name), name)

    @property
    def model_names(self) -> list[str]:
        models = self._raw.get("models")
        if not isinstance(models, dict) or not models:
            raise PipelineError(f"{self.source}: models must map model names to architectures")
        for name in models:
            if not isinstance(name, str) or not MODEL_NAME.match(name):
                raise PipelineError(
                    f"{self.source}: models.{shown(name)}: a model name is 1 to 64 letters, "
                    "digits, '_' and '-', starting with a letter or digit (it becomes a folder, "
                    "a file, a stage and a command-line argument)"
                )
        return list(models)

    def run_config(self, name: str) -> RunConfig:
        """The validated config of model `name`; unknown names are refused, listing the known."""
        if name not in self.model_names:
            raise PipelineError(
                f"{self.source}: no model {shown(name)} under models; "
                f"known: {', '.join(self.model_names)}"
            )
        return self.entry_config(name, self._take("models", name), f"models.{name}")

    def run_configs(self) -> list[RunConfig]:
        return [self.run_config(name) for name in self.model_names]

    def entry_config(self, name: str, entry: Any, where: str) -> RunConfig:
        """A model entry (hidden, activation, any `train` key) applied to the `train` section
        and validated; errors name `where` the offending key is written. Only the `train` keys
        that the entry does not override count as read."""
        if not isinstance(entry, dict):
            raise PipelineError(f"{self.source}: {where} = {shown(entry)}: expected a mapping")
        shared = self._raw.get("train")
        if not isinstance(shared, dict):
            raise PipelineError(f"{self.source}: train = {shown(shared)}: expected a mapping")
        inherited = {key: self._take("train", key) for key in shared if key not in entry}
        merged = inherited | entry
        unknown = sorted(set(entry) - set(TRAIN_SECTION_KEYS) - ENTRY_KEYS, key=str)
        if unknown:
            raise PipelineError(self._unknown_key(where, unknown[0], entry[unknown[0]]))
        architecture = {k: v for k, v in merged.items() if k in ModelSpec.model_fields}
        training = {k: v for k, v in merged.items() if k in TrainParams.model_fields}
        model = self._validate_merged(ModelSpec, architecture, entry, where)
        train = self._validate_merged(TrainParams, training, entry, where)
        return RunConfig(name=name, model=model, train=train)

    def _validate_merged(
        self, schema: type[BaseModel], values: dict[str, Any], entry: dict, where: str
    ) -> Any:
        try:
            return schema.model_validate(values)
        except ValidationError as err:
            # Name the key where it is written (or must be): the model's entry, or `train`.
            loc = err.errors()[0]["loc"]
            if loc:
                in_entry = loc[0] in entry or loc[0] in ENTRY_KEYS
            else:  # a rule across keys involves the entry whenever it sets one of them
                in_entry = bool(set(entry) & set(values))
            raise PipelineError(
                _one_line(err, self.source, where if in_entry else "train")
            ) from None


def _leaves(prefix: str, value: Any) -> Iterator[str]:
    """Dotted keys of the values under `prefix`, as DVC names params (a list is one value)."""
    if isinstance(value, dict) and value:
        for key, inner in value.items():
            yield from _leaves(f"{prefix}.{key}", inner)
    else:
        yield prefix


def load_params(path: Path) -> Params:
    """Read `path` as DVC does (YAML 1.2). A missing, unparsable, oversized or explosive file, or
    one with a key written twice, is a PipelineError naming it."""
    path = Path(path)
    raw = parse_yaml(read_text(path, MAX_FILE_BYTES, "params file"), path)
    if not isinstance(raw, dict):
        raise PipelineError(f"{path}: expected a mapping of sections ({', '.join(SECTIONS)})")
    return Params(raw, path)


def _one_line(err: ValidationError, source: Path, where: str) -> str:
    errors = err.errors()
    # A typo'd key is both unknown and leaves the real key missing: name the typo.
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    # A tagged union (the sweep's space) repeats its tag in the location: say it once.
    parts = [str(part) for part in first["loc"]]
    parts = [part for index, part in enumerate(parts) if index == 0 or part != parts[index - 1]]
    key = ".".join([where, *parts])
    message_text = first["msg"].removeprefix("Value error, ")
    if not first["loc"]:  # a rule across keys, e.g. warmup_epochs <= epochs
        message = f"{source}: {key}: {message_text}"
    elif first["type"] == "missing":
        message = f"{source}: {key}: missing (every key is required)"
    elif first["type"] == "extra_forbidden":
        known = [*TRAIN_SECTION_KEYS, *ENTRY_KEYS]
        guess = difflib.get_close_matches(str(first["loc"][-1]), known, n=1)
        hint = f" (did you mean {guess[0]!r}?)" if guess else ""
        message = f"{source}: {key} = {shown(first['input'])}: unknown key{hint}"
    else:
        message = f"{source}: {key} = {shown(first['input'])}: {message_text}"
    more = len(errors) - 1
    return message + (f" (and {more} more)" if more else "")
