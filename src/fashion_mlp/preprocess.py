"""Stage `preprocess`: decode the IDX files once into compact tensors.

Reads `data/raw/*.gz` (written by `download`). Writes `data/processed/train.pt` and
`data/processed/test.pt`, each a dict of `images` (uint8, N x 28 x 28, raw pixel values 0-255)
and `labels` (int64, N). uint8 keeps the files 4x smaller than float32; training converts them
to float in [0, 1] once, in memory. Decoding uses torchvision's IDX reader; this module adds the
checks that reader leaves to `assert` (shape, dtype, label range, matching counts).

    fashion-mlp preprocess --raw-dir data/raw --out-dir data/processed
"""

import gzip
import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from fashion_mlp.atomic import atomic_path
from fashion_mlp.download import RAW_FILES
from fashion_mlp.errors import PipelineError

IMAGE_SHAPE = (28, 28)
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
SPLITS = ("train", "test")
GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8, N x 28 x 28
    labels: torch.Tensor  # int64, N

    def __len__(self) -> int:
        return len(self.labels)


def read_idx(path: Path) -> torch.Tensor:
    """Decode one IDX file (gzip or plain) with torchvision's reader; PipelineError if malformed."""
    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

    try:
        with open(path, "rb") as stream:
            content = stream.read()
        if content[:2] == GZIP_MAGIC:
            content = gzip.decompress(content)
        with tempfile.NamedTemporaryFile(suffix=".idx") as plain:
            plain.write(content)
            plain.flush()
            return read_sn3_pascalvincent_tensor(plain.name, strict=True)
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run `fashion-mlp download` first") from None
    # torchvision signals a bad magic number or size with bare asserts and lookup errors.
    except (OSError, EOFError, AssertionError, KeyError, RuntimeError, ValueError) as err:
        reason = str(err) or type(err).__name__
        raise PipelineError(f"{path}: not a valid gzip IDX file ({reason})") from None


def decode_split(images_path: Path, labels_path: Path) -> Split:
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.dtype != torch.uint8 or images.dim() != 3 or tuple(images.shape[1:]) != IMAGE_SHAPE:
        raise PipelineError(
            f"{images_path}: expected uint8 images of shape N x 28 x 28, "
            f"got {images.dtype} {tuple(images.shape)}"
        )
    if labels.dtype != torch.uint8 or labels.dim() != 1:
        raise PipelineError(f"{labels_path}: expected a 1-D uint8 label vector, got {labels.dtype}")
    if len(labels) != len(images):
        raise PipelineError(
            f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path}"
        )
    if len(labels) and int(labels.max()) >= len(CLASS_NAMES):
        raise PipelineError(f"{labels_path}: label {int(labels.max())} outside 0-9")
    return Split(images=images.contiguous(), labels=labels.long())


def preprocess(raw_dir: Path, out_dir: Path) -> dict[str, Split]:
    """Decode both splits from `raw_dir` and write them to `out_dir` (all or nothing)."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    splits = {
        split: decode_split(
            raw_dir / RAW_FILES[f"{split}_images"], raw_dir / RAW_FILES[f"{split}_labels"]
        )
        for split in SPLITS
    }
    # Decoding finished for every split before the first write: a bad file leaves no output.
    for split, data in splits.items():
        with atomic_path(out_dir / f"{split}.pt") as tmp:
            torch.save({"images": data.images, "labels": data.labels}, tmp)
    return splits


def load_split(processed_dir: Path, split: str) -> Split:
    path = Path(processed_dir) / f"{split}.pt"
    try:
        saved = torch.load(path, weights_only=True)
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run `fashion-mlp preprocess` first") from None
    return Split(images=saved["images"], labels=saved["labels"])


def data_fingerprint(processed_dir: Path) -> str:
    """MD5 over the processed tensors, recorded with each run so runs on other data stand out."""
    digest = hashlib.md5()
    for split in SPLITS:
        digest.update((Path(processed_dir) / f"{split}.pt").read_bytes())
    return digest.hexdigest()
