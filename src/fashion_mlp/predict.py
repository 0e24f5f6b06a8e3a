"""Command `predict`: classify 28x28 grayscale images with a tracked (or saved) model.

Reads PNG files (8-bit grayscale, 28 x 28, Fashion-MNIST's convention: light garment on a dark
background) or IDX image files (gzip or plain, like `data/raw/t10k-images-idx3-ubyte.gz`).
The model is any MLflow model URI (default: the registered `champion`) or a local checkpoint
such as `models/mlp1/model.pt`.

    fashion-mlp predict shirt.png data/raw/t10k-images-idx3-ubyte.gz --limit 5
"""

from pathlib import Path

import torch

from fashion_mlp.errors import PipelineError
from fashion_mlp.preprocess import IMAGE_SHAPE, read_idx_images
from fashion_mlp.tracking import TrackingTarget, connect
from fashion_mlp.train import as_inputs


def read_png(path: Path) -> torch.Tensor:
    """One 28 x 28 grayscale PNG as a 1 x 28 x 28 uint8 tensor; PipelineError if it is not."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found") from None
    except (UnidentifiedImageError, OSError):
        raise PipelineError(f"{path}: not a readable image") from None
    if image.mode != "L":
        raise PipelineError(
            f"{path}: expected 8-bit grayscale (mode L), got mode {image.mode}; "
            "convert it first, e.g. with Pillow's Image.convert('L')"
        )
    if image.size != IMAGE_SHAPE:
        width, height = image.size
        raise PipelineError(f"{path}: expected 28 x 28 pixels, got {width} x {height}")
    return torch.from_numpy(np.array(image, dtype=np.uint8)).unsqueeze(0)


def read_images(path: Path) -> torch.Tensor:
    """N x 28 x 28 uint8 images from a PNG or an IDX file."""
    path = Path(path)
    if path.suffix.lower() == ".png":
        return read_png(path)
    return read_idx_images(path)


def load_model(model: str, target: TrackingTarget) -> torch.nn.Module:
    """A local checkpoint path, or any MLflow model URI (models:/…, runs:/…)."""
    if Path(model).is_file():
        from fashion_mlp.model import load_checkpoint

        return load_checkpoint(Path(model))[0]
    import mlflow.pytorch

    connect(target)
    try:
        loaded = mlflow.pytorch.load_model(model, map_location="cpu")
    except Exception as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise PipelineError(
            f"cannot load model {model} from {target.uri} ({reason}); "
            "run `dvc repro` to train and register one, or pass --model models/mlp1/model.pt"
        ) from None
    # MLflow 3 logs a torch.export graph, already in inference mode (it has no .eval()).
    return loaded


@torch.inference_mode()
def class_probabilities(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """N x 10 softmax probabilities for uint8 images."""
    return torch.softmax(model(as_inputs(images)), dim=1)
