"""Command `predict`: classify 28x28 grayscale images with a tracked (or saved) model.

Reads PNG files (8-bit grayscale, 28 x 28, Fashion-MNIST's convention: light garment on a dark
background) or IDX image files (gzip or plain, like `data/raw/t10k-images-idx3-ubyte.gz`; only
the images shown are decompressed). The model is any MLflow model URI (default: the registered
`champion`) or a local checkpoint such as `models/mlp1/model.pt`.

A logged model is loaded only if it is in MLflow's `pt2` format (a torch.export graph) with no
code of its own: a model in the `pickle` format would run whatever its author pickled the moment
it is loaded, and a tracking server is not a place to trust. It is downloaded, inspected, then
loaded from that same local copy, with MLflow's pickle loading switched off as a second guard.

    fashion-mlp predict shirt.png data/raw/t10k-images-idx3-ubyte.gz --limit 5
"""

import os
import tempfile
from pathlib import Path

import torch

from fashion_mlp.errors import PipelineError
from fashion_mlp.model import as_inputs
from fashion_mlp.preprocess import read_idx_images
from fashion_mlp.tracking import TrackingTarget, connect, store_error

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SAFE_MODEL_FILES = {"model.pt2"}


def read_png(path: Path) -> torch.Tensor:
    """One 28 x 28 grayscale PNG as a 1 x 28 x 28 uint8 tensor; PipelineError if it is not.

    The size is read from the header before any pixel is decoded, so a huge image (a
    decompression bomb) is refused for its size, not decoded.
    """
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
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
    except (UnidentifiedImageError, OSError):
        raise PipelineError(f"{path}: not a readable image") from None
    return torch.from_numpy(pixels).unsqueeze(0)


def read_images(path: Path, limit: int | None = None) -> torch.Tensor:
    """N x 28 x 28 uint8 images from a PNG or an IDX file (at most `limit` from an IDX file)."""
    path = Path(path)
    if path.suffix.lower() == ".png":
        return read_png(path)
    return read_idx_images(path, limit)


def load_model(model: str, target: TrackingTarget) -> torch.nn.Module:
    """A local checkpoint path, or any MLflow model URI (models:/…, runs:/…) of a safe model."""
    if Path(model).is_file():
        from fashion_mlp.model import load_checkpoint

        return load_checkpoint(Path(model))[0]
    import mlflow
    from mlflow.exceptions import MlflowException

    connect(target)
    # A second guard: MLflow's own pickle loading off, whatever our inspection says.
    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"
    # The printed predictions are the output; a download progress bar would interleave with it.
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    with tempfile.TemporaryDirectory(prefix="fashion-mlp-model-") as folder:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=model, dst_path=folder)
        except MlflowException as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise PipelineError(
                f"cannot load model {model} from {target.uri} ({reason}); "
                "run `dvc repro` to train and register one, or pass --model models/mlp1/model.pt"
            ) from None
        except OSError as err:
            raise store_error(target, err) from None
        refuse_unsafe_model(model, Path(local))
        try:
            # MLflow 3 logs a torch.export graph, already in inference mode (it has no .eval()).
            return mlflow.pytorch.load_model(local, map_location="cpu")
        except Exception as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise PipelineError(f"cannot load model {model} ({reason})") from None


def refuse_unsafe_model(model: str, local: Path) -> None:
    """PipelineError unless `local` is a PyTorch model in the pt2 format with no code paths."""
    import yaml

    try:
        flavors = yaml.safe_load((local / "MLmodel").read_text(encoding="utf-8"))["flavors"]
        pytorch = flavors["pytorch"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        raise PipelineError(
            f"refusing model {model}: not an MLflow PyTorch model (no pytorch flavor in MLmodel)"
        ) from None
    data = local / str(pytorch.get("model_data", "data"))
    files = {path.name for path in data.iterdir()} if data.is_dir() else set()
    if files != SAFE_MODEL_FILES or pytorch.get("code"):
        found = ", ".join(sorted(files)) or "nothing"
        raise PipelineError(
            f"refusing model {model}: it is not in MLflow's safe pt2 format (its data holds "
            f"{found}{' and code' if pytorch.get('code') else ''}); loading it could run code "
            "from whoever logged it. Log models with serialization_format='pt2'"
        )


@torch.inference_mode()
def class_probabilities(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """N x 10 softmax probabilities for uint8 images."""
    return torch.softmax(model(as_inputs(images)), dim=1)
