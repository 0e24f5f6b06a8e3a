"""Stage `preprocess`: decode the IDX files once into compact tensors.

Reads `data/raw/*.gz` (written by `download`). Writes `data/processed/train.pt` and
`data/processed/test.pt` (see `splits.py` for their contents). uint8 keeps the files 4x smaller
than float32; training converts them to float in [0, 1] once, in memory. The IDX header, the
shapes, the label range and the counts are all checked, so a malformed file stops the stage with
one line naming it and what is wrong.

A header is a claim: it is checked against what the file can hold before anything is
decompressed, and the data is streamed, so a small gzip file that claims millions of images
costs nothing but its refusal.

    fashion-mlp preprocess --raw-dir data/raw --out-dir data/processed
"""

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import torch

from fashion_mlp.dataset import IMAGE_SHAPE, MAX_IMAGES, NUM_CLASSES, RAW_FILES, SPLITS
from fashion_mlp.errors import PipelineError
from fashion_mlp.splits import Split, save_split, split_path

GZIP_MAGIC = b"\x1f\x8b"
IDX_UINT8_MAGIC = b"\x00\x00\x08"
# Deflate cannot expand data by more than this factor (RFC 1951's longest match, 258 bytes,
# coded in 2 bits): a header claiming more than this times the gzip file's size is a lie.
MAX_DEFLATE_RATIO = 1032
CHUNK = 1 << 20


def read_idx(path: Path, limit: int | None = None) -> torch.Tensor:
    """Decode one uint8 IDX file (gzip or plain) into a tensor of the shape its header gives,
    or only its first `limit` items.

    IDX: two zero bytes, type code 0x08 (uint8), the number of dimensions, one big-endian
    uint32 per dimension, then the data. Every part is checked, so a bad file is named with
    what is wrong instead of failing deep inside a decoder.
    """
    path = Path(path)
    try:
        with path.open("rb") as raw:
            compressed = raw.read(2) == GZIP_MAGIC
            raw.seek(0)
            size = os.fstat(raw.fileno()).st_size
            stream: BinaryIO = gzip.GzipFile(fileobj=raw) if compressed else raw  # type: ignore[assignment]
            return _decode(path, stream, size, compressed, limit)
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run `fashion-mlp download` first") from None
    except IsADirectoryError:
        raise PipelineError(f"{path}: is a folder, expected an IDX file") from None
    except (OSError, EOFError, zlib.error) as err:
        raise PipelineError(f"{path}: not a complete gzip file ({err})") from None


def _decode(
    path: Path, stream: BinaryIO, size: int, compressed: bool, limit: int | None
) -> torch.Tensor:
    magic = stream.read(4)
    if len(magic) < 4 or magic[:3] != IDX_UINT8_MAGIC:
        raise PipelineError(
            f"{path}: not a uint8 IDX file: magic number {magic.hex()}, "
            f"expected {IDX_UINT8_MAGIC.hex()}01 (labels) or {IDX_UINT8_MAGIC.hex()}03 (images)"
        )
    dims = stream.read(4 * magic[3])
    if magic[3] == 0 or len(dims) < 4 * magic[3]:
        raise PipelineError(f"{path}: the IDX header ends before its {magic[3]} dimensions")
    shape = struct.unpack(f">{magic[3]}I", dims)
    claimed = math.prod(shape)
    described = f"the header says {' x '.join(map(str, shape))} = {claimed} bytes of data"
    if shape[0] > MAX_IMAGES:
        raise PipelineError(
            f"{path}: the header claims {shape[0]} items; Fashion-MNIST files hold at most "
            f"{MAX_IMAGES} (refused before decompressing)"
        )
    capacity = size * MAX_DEFLATE_RATIO if compressed else size - len(magic) - len(dims)
    if claimed > capacity:
        kind = "gzip file" if compressed else "file"
        raise PipelineError(
            f"{path}: {described}, more than a {size}-byte {kind} can hold "
            "(refused before decompressing)"
        )
    items = shape[0] if limit is None else min(limit, shape[0])
    item_size = math.prod(shape[1:])
    data = _read_up_to(stream, items * item_size)
    if len(data) < items * item_size:
        raise PipelineError(f"{path}: {described}, the file holds {len(data)}")
    if limit is None:
        extra = _count_rest(stream, claimed)
        if extra:
            raise PipelineError(f"{path}: {described}, the file holds {claimed + extra}")
    if not data:
        return torch.empty((items, *shape[1:]), dtype=torch.uint8)
    return torch.frombuffer(data, dtype=torch.uint8).reshape(items, *shape[1:])


def _read_up_to(stream: BinaryIO, count: int) -> bytearray:
    """Up to `count` bytes, read in chunks: memory grows only as real data arrives."""
    data = bytearray()
    while len(data) < count:
        chunk = stream.read(min(CHUNK, count - len(data)))
        if not chunk:
            break
        data += chunk
    return data


def _count_rest(stream: BinaryIO, limit: int) -> int:
    """How many bytes follow (counting stops past `limit`: enough to say the file is wrong)."""
    extra = 0
    while extra <= limit and (chunk := stream.read(CHUNK)):
        extra += len(chunk)
    return extra


def read_idx_images(path: Path, limit: int | None = None) -> torch.Tensor:
    """N x 28 x 28 uint8 images from an IDX file (used by `preprocess` and `predict`)."""
    images = read_idx(path, limit)
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
    if len(labels) == 0:
        raise PipelineError(f"{labels_path}: no labels in it")
    if int(labels.max()) >= NUM_CLASSES:
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
        save_split(data, split_path(out_dir, split))
    return splits
