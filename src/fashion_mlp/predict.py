"""Command `predict`: classify 28x28 grayscale images with a tracked (or saved) model.

Reads PNG files (8-bit grayscale, 28 x 28, Fashion-MNIST's convention: light garment on a dark
background; one frame, not an animation) or IDX image files (gzip or plain, like
`data/raw/t10k-images-idx3-ubyte.gz`; only the images shown are decompressed), told apart by
their first bytes, so a PNG need not be named `.png`. It reads files only, never standard input
(`-`). The model is any MLflow model URI (default: the registered `champion`) or a local
checkpoint such as `models/mlp1/model.safetensors`.

A registered model is used only if its files are exactly what our `train` logs, and the
registry's champion only if its checkpoint is the one this workspace names (champion.py); the
network is rebuilt from that checkpoint, so nothing a tracking server holds runs. The first line
printed names the model that answered, and who trained it.

    fashion-mlp samples && fashion-mlp predict samples/*.png
    fashion-mlp predict data/raw/t10k-images-idx3-ubyte.gz --limit 5
"""

from collections.abc import Callable
from pathlib import Path

import torch

from fashion_mlp.champion import WorkspaceChampion, checked_model
from fashion_mlp.errors import PipelineError
from fashion_mlp.model import as_inputs
from fashion_mlp.preprocess import GZIP_MAGIC, IDX_UINT8_MAGIC, read_idx_images
from fashion_mlp.tracking.registry import Registry

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# What shells and most tools call standard input.
STDIN_NAME = "-"


def read_png(path: Path) -> torch.Tensor:
    """One 28 x 28 grayscale PNG as a 1 x 28 x 28 uint8 tensor; PipelineError if it is not.

    The size is read from the header before any pixel is decoded, so a huge image (a
    decompression bomb) is refused for its size, not decoded. Only Pillow's PNG decoder is
    tried: whatever else a file holds is not handed to another format's parser.
    """
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path, formats=["PNG"]) as image:
            # Pillow decodes an APNG's first frame as if it were the whole image.
            if getattr(image, "n_frames", 1) > 1:
                raise PipelineError(
                    f"{path}: an animated PNG ({image.n_frames} frames); predict classifies "
                    "one still image per file: save the frame you mean as a PNG of its own"
                )
            if image.size != (28, 28):
                width, height = image.size
                raise PipelineError(f"{path}: expected 28 x 28 pixels, got {width} x {height}")
            if image.mode != "L":
                raise PipelineError(
                    f"{path}: expected 8-bit grayscale (mode L), got mode {image.mode}; "
                    "convert it first, e.g. with Pillow's Image.convert('L')"
                )
            image.load()
            pixels = np.array(image, dtype=np.uint8)
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found") from None
    except IsADirectoryError:
        raise PipelineError(f"{path}: is a folder, expected an image") from None
    except Image.DecompressionBombError as err:
        reason = str(err).split(",")[0]
        raise PipelineError(
            f"{path}: expected 28 x 28 pixels, refused before decoding: {reason}"
        ) from None
    except ValueError as err:
        # Pillow's refusal of a text (zTXt, iTXt) or colour-profile (iCCP) chunk that inflates
        # past its limit: a decompression bomb in the metadata.
        raise PipelineError(
            f"{path}: refused before decoding: a text or colour-profile chunk inflates too far "
            f"({err})"
        ) from None
    except (UnidentifiedImageError, OSError):
        raise PipelineError(f"{path}: not a readable image") from None
    return torch.from_numpy(pixels).unsqueeze(0)


def read_images(path: Path, limit: int | None = None) -> torch.Tensor:
    """N x 28 x 28 uint8 images from a PNG or an IDX file (at most `limit` from an IDX file)."""
    path = Path(path)
    if str(path) == STDIN_NAME and not path.exists():
        raise PipelineError(
            "-: predict reads image files, not standard input; save the image to a file and "
            "pass its path"
        )
    start = _first_bytes(path, len(PNG_SIGNATURE))
    if path.suffix.lower() == ".png" or start == PNG_SIGNATURE:
        return read_png(path)
    if start and not start.startswith((GZIP_MAGIC, IDX_UINT8_MAGIC)):
        raise PipelineError(
            f"{path}: neither a PNG nor an IDX image file; predict reads 28 x 28 grayscale "
            "PNGs and IDX image files"
        )
    return read_idx_images(path, limit)


def _first_bytes(path: Path, count: int) -> bytes:
    """The file's first `count` bytes; none if it cannot be read (its reader then says why)."""
    try:
        with path.open("rb") as file:
            return file.read(count)
    except OSError:
        return b""


def load_model(
    model: str | None, registry: Registry, workspace: Callable[[], WorkspaceChampion]
) -> tuple[torch.nn.Module, str]:
    """A local checkpoint path, or a registry URI (default: the champion, which must be the
    `workspace`'s); the network and a line saying which model it is."""
    if model and not model.startswith("models:/"):
        from fashion_mlp.model import load_checkpoint

        network, spec = load_checkpoint(Path(model))
        return network, f"checkpoint {model} ({spec.describe()})"
    checked = checked_model(registry, model, workspace)
    return checked.network, checked.describe()


@torch.inference_mode()
def class_probabilities(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """N x 10 softmax probabilities for uint8 images."""
    return torch.softmax(model(as_inputs(images)), dim=1)
