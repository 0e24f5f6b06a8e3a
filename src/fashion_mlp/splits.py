"""The processed data set: one file per split, written by `preprocess`, read by every trainer.

`data/processed/{train,test}.safetensors` each hold `images` (uint8, N x 28 x 28, raw pixels
0-255) and `labels` (int64, N, in 0-9). safetensors holds tensors only (loading runs no code) and
its bytes depend on the tensors alone, so the same data gives the same file on every machine:
DVC then sees an unchanged `data/processed`, and the MLflow dataset digest stays the same.
Loading checks all of it, so a file that is not ours (float images already scaled to [0, 1]
would silently train to chance accuracy, labels out of range would fail deep inside the loss)
stops a stage at once with one line naming the file and what is wrong.

`carve_validation` splits a seeded validation set off the training images: the sweep and the
preset search select on it and never see the test split. torch is imported inside the functions
that need it: `evaluate` reads the test labels (`load_arrays`) without loading torch.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fashion_mlp.atomic import write_bytes_atomic
from fashion_mlp.dataset import IMAGE_SHAPE, MAX_IMAGES, NUM_CLASSES
from fashion_mlp.errors import PipelineError

RERUN_HINT = "rerun `fashion-mlp preprocess` (or `dvc repro preprocess`)"


@dataclass(frozen=True)
class Split:
    images: Any  # torch.Tensor, uint8, N x 28 x 28
    labels: Any  # torch.Tensor, int64, N

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Any) -> "Split":
        return Split(images=self.images[indices], labels=self.labels[indices])


def split_path(processed_dir: Path, split: str) -> Path:
    return Path(processed_dir) / f"{split}.safetensors"


def split_bytes(data: Split) -> bytes:
    from safetensors.torch import save

    return save({"images": data.images.contiguous(), "labels": data.labels.contiguous()})


def save_split(data: Split, path: Path) -> None:
    write_bytes_atomic(path, split_bytes(data))


def load_split(processed_dir: Path, split: str) -> Split:
    """Load and check one split as torch tensors (see `load_arrays`)."""
    import torch

    images, labels = load_arrays(processed_dir, split)
    return Split(images=torch.from_numpy(images), labels=torch.from_numpy(labels))


def load_arrays(processed_dir: Path, split: str) -> tuple[Any, Any]:
    """One split's (images, labels) as numpy arrays, checked: anything but what `preprocess`
    writes is a PipelineError."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    path = split_path(processed_dir, split)
    try:
        saved = load(path.read_bytes())
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run `fashion-mlp preprocess` first") from None
    except IsADirectoryError:
        raise PipelineError(f"{path}: is a folder, expected a tensor file; {RERUN_HINT}") from None
    except (SafetensorError, ValueError, RuntimeError) as err:  # truncated, not safetensors
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise PipelineError(f"{path}: not a processed split ({reason}); {RERUN_HINT}") from None
    if set(saved) != {"images", "labels"}:
        raise PipelineError(
            f"{path}: expected tensors images and labels, got {sorted(saved)}; {RERUN_HINT}"
        )
    images, labels = saved["images"], saved["labels"]
    check_split(path, images, labels)
    return images, labels


def check_split(path: Path, images: Any, labels: Any) -> None:
    def refuse(problem: str) -> PipelineError:
        return PipelineError(f"{path}: {problem}; {RERUN_HINT}")

    if images.dtype.name != "uint8":
        raise refuse(f"images are {images.dtype.name}, expected uint8 pixels 0-255")
    if images.ndim != 3 or tuple(images.shape[1:]) != IMAGE_SHAPE:
        raise refuse(f"images have shape {tuple(images.shape)}, expected N x 28 x 28")
    if labels.dtype.name != "int64" or labels.ndim != 1:
        raise refuse(
            f"labels are {labels.dtype.name} of shape {tuple(labels.shape)}, expected int64 N"
        )
    if len(labels) != len(images):
        raise refuse(f"{len(labels)} labels for {len(images)} images")
    if not 0 < len(labels) <= MAX_IMAGES:
        raise refuse(f"{len(labels)} images, expected 1 to {MAX_IMAGES}")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= NUM_CLASSES:
        raise refuse(f"labels range {low}..{high}, expected 0..{NUM_CLASSES - 1}")


def carve_validation(train: Split, size: int, seed: int) -> tuple[Split, Split]:
    """(rest, validation): `size` training images drawn by `seed`, each part in file order."""
    import torch

    if not 0 < size < len(train):
        raise PipelineError(
            f"validation size {size} must be between 1 and {len(train) - 1} "
            f"(the training split has {len(train)} images)"
        )
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    validation, rest = order[:size].sort().values, order[size:].sort().values
    return train.subset(rest), train.subset(validation)


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with Path(path).open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dvc_digests(folder: Path) -> tuple[str, dict[str, str]]:
    """(the folder's hash, each file's MD5 by relative path), as DVC records them in dvc.lock:
    the folder hash (`….dir`) is the MD5 of the sorted manifest of file MD5s. An MLflow run
    and `dvc.lock` then name the data by the same digests."""
    folder = Path(folder)
    files = {
        path.relative_to(folder).as_posix(): file_md5(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }
    manifest = [{"md5": md5, "relpath": relpath} for relpath, md5 in sorted(files.items())]
    return hashlib.md5(json.dumps(manifest, sort_keys=True).encode()).hexdigest() + ".dir", files
