"""Stage `preprocess`: decode the IDX files once into compact tensors.

Reads `data/raw/*.gz` (written by `download`). Writes `data/processed/train.pt` and
`data/processed/test.pt`, each a dict of `images` (uint8, N x 28 x 28, raw pixel values 0-255)
and `labels` (int64, N). uint8 keeps the files 4x smaller than float32; training converts them
to float in [0, 1] once, in memory. The IDX header, the shapes, the label range and the counts
are all checked, so a malformed file stops the stage with one line naming it and what is wrong.

    fashion-mlp preprocess --raw-dir data/raw --out-dir data/processed
"""

import gzip
import hashlib
import math
import struct
import zlib
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
IDX_UINT8_MAGIC = b"\x00\x00\x08"


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8, N x 28 x 28
    labels: torch.Tensor  # int64, N

    def __len__(self) -> int:
        return len(self.labels)


def read_idx(path: Path) -> torch.Tensor:
    """Decode one uint8 IDX file (gzip or plain) into a tensor of the shape its header gives.

    IDX: two zero bytes, type code 0x08 (uint8), the number of dimensions, one big-endian
    uint32 per dimension, then the data. Every part is checked, so a bad file is named with
    what is wrong instead of failing deep inside a decoder.
    """
    path = Path(path)
    try:
        content = path.read_bytes()
        if content[:2] == GZIP_MAGIC:
            content = gzip.decompress(content)
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run `fashion-mlp download` first") from None
    except (OSError, EOFError, zlib.error) as err:
        raise PipelineError(f"{path}: not a complete gzip file ({err})") from None
    if len(content) < 4 or content[:3] != IDX_UINT8_MAGIC:
        raise PipelineError(
            f"{path}: not a uint8 IDX file: magic number {content[:4].hex()}, "
            f"expected {IDX_UINT8_MAGIC.hex()}01 (labels) or {IDX_UINT8_MAGIC.hex()}03 (images)"
        )
    header_size = 4 + 4 * content[3]
    shape = struct.unpack(f">{content[3]}I", content[4:header_size].ljust(header_size - 4, b"\0"))
    if len(content) != header_size + math.prod(shape):
        raise PipelineError(
            f"{path}: the header says {' x '.join(map(str, shape))} = {math.prod(shape)} bytes "
            f"of data, the file holds {max(len(content) - header_size, 0)}"
        )
    return torch.frombuffer(bytearray(content), dtype=torch.uint8, offset=header_size).reshape(
        shape
    )


def read_idx_images(path: Path) -> torch.Tensor:
    """N x 28 x 28 uint8 images from an IDX file (used by `preprocess` and `predict`)."""
    images = read_idx(path)
    if images.dim() != 3 or tuple(images.shape[1:]) != IMAGE_SHAPE:
        raise PipelineError(
            f"{path}: expected images of shape N x 28 x 28, got {tuple(images.shape)}"
        )
    return images


def decode_split(images_path: Path, labels_path: Path) -> Split:
    images = read_idx_images(images_path)
    labels = read_idx(labels_path)
    if labels.dim() != 1:
        raise PipelineError(
            f"{labels_path}: expected a vector of labels, got {tuple(labels.shape)}"
        )
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
