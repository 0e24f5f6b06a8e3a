"""The champion this workspace names, and a registered model checked against it by its bytes.

The workspace's champion is params `mlflow.champion`. Its weights are the SHA-256 of
`models/CHAMPION/model.safetensors` where the workspace holds that file (after `dvc repro` or
`dvc pull`), else the `weights_sha256` that `reports/champion.json` (in git) records. `predict`
and `serve` use the registry's champion only if the checkpoint logged with it has exactly those
bytes; otherwise they say which champion the registry holds and which one the workspace names,
and refuse. A model named explicitly (`--model models:/NAME/3`) is used as it is, its author
named. Either way the network is rebuilt from the checked checkpoint (model.py): nothing a
tracking server holds is run.
"""

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fashion_mlp.artifacts import MODEL_FILE, weights_digest
from fashion_mlp.documents import read_json
from fashion_mlp.errors import PipelineError
from fashion_mlp.model import network_from_checkpoint
from fashion_mlp.tracking.registry import Registry, champion_uri

PROMOTE = "dvc repro --force --single-item register"
MAX_CHAMPION_FILE_BYTES = 100_000


@dataclass(frozen=True)
class WorkspaceChampion:
    model: str
    weights_sha256: str
    source: Path  # the file that says so


def workspace_champion(model: str, models_dir: Path, champion_file: Path) -> WorkspaceChampion:
    """The champion's weights as this workspace holds them, or as champion.json records them."""
    checkpoint = Path(models_dir) / model / MODEL_FILE
    if checkpoint.exists():
        return WorkspaceChampion(model, weights_digest(checkpoint), checkpoint)
    if not Path(champion_file).exists():
        raise PipelineError(
            f"no champion in this workspace: neither {checkpoint} nor {champion_file} exists; "
            "run `dvc repro` (or `dvc pull`), or pass --model"
        )
    recorded = read_json(champion_file, MAX_CHAMPION_FILE_BYTES, "champion file")
    if not isinstance(recorded, dict) or recorded.get("model") != model:
        named = recorded.get("model") if isinstance(recorded, dict) else None
        raise PipelineError(
            f"{champion_file} names {named!r}, params mlflow.champion {model!r}; run `{PROMOTE}`"
        )
    return WorkspaceChampion(model, str(recorded.get("weights_sha256", "")), Path(champion_file))


@dataclass(frozen=True)
class CheckedModel:
    network: Any  # torch.nn.Module, in eval mode
    about: dict[str, str]  # model, version, registered_model, run_id, model_id, author
    weights_sha256: str

    def describe(self) -> str:
        about = self.about
        version = f" version {about['version']}" if about["version"] else ""
        return (
            f"{about['registered_model'] or 'model'}{version}: {about['model']} (run "
            f"{about['run_id']} by {about['author']}, logged model {about['model_id']}, "
            f"weights sha256 {self.weights_sha256})"
        )


def checked_model(
    registry: Registry, uri: str | None, workspace: Callable[[], WorkspaceChampion]
) -> CheckedModel:
    """The registered model at `uri` (default: the registry's champion, whose checkpoint must
    be the `workspace`'s, asked for once the model's files passed their checks), rebuilt from
    its logged checkpoint."""
    uri = uri or champion_uri(registry.name)
    checkpoint, about = registry.fetch(uri)
    digest = hashlib.sha256(checkpoint).hexdigest()
    expected = workspace() if uri == champion_uri(registry.name) else None
    if expected is not None and digest != expected.weights_sha256:
        raise PipelineError(
            f"the registry's champion ({about['registered_model']} version "
            f"{about['version']}: {about['model']}, run {about['run_id']} by "
            f"{about['author']}, weights sha256 {digest[:12]}...) is not this workspace's "
            f"({expected.model}, sha256 {expected.weights_sha256[:12]}... in "
            f"{expected.source}): promote the workspace's with `{PROMOTE}`, or `git pull` "
            "the champion a teammate promoted"
        )
    network, _ = network_from_checkpoint(checkpoint, f"model {uri}")
    return CheckedModel(network, about, digest)
