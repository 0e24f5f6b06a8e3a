"""Command `samples`: test images to try `predict` and `serve` on, from the processed test split.

Writes, for the first COUNT test images, `samples/INDEX-CLASS.png` (28 x 28, 8-bit grayscale,
as `predict` reads them; the true class is in the name) and `samples/request.json`: the same
images as the body `POST /invocations` of `fashion-mlp serve` takes (MLflow's `inputs` form:
COUNT x 28 x 28 pixels in [0, 1], the scaling `train` applies).

    fashion-mlp samples --count 3 && fashion-mlp predict samples/*.png
"""

import json
from pathlib import Path

from fashion_mlp.atomic import atomic_folder
from fashion_mlp.dataset import CLASS_NAMES
from fashion_mlp.splits import load_arrays

REQUEST_FILE = "request.json"


def sample_name(index: int, label: int) -> str:
    return f"{index:04d}-{CLASS_NAMES[label].lower().replace(' ', '_').replace('/', '_')}.png"


def write_samples(processed_dir: Path, out_dir: Path, count: int) -> list[Path]:
    """The PNG of each of the first `count` test images and the request holding them, written
    afresh into `out_dir` (all or nothing); the PNGs' final paths."""
    from PIL import Image

    images, labels = load_arrays(processed_dir, "test")
    images, labels = images[:count], labels[:count]
    names = [sample_name(index, int(label)) for index, label in enumerate(labels)]
    with atomic_folder(Path(out_dir)) as staging:
        for name, image in zip(names, images, strict=True):
            Image.fromarray(image).save(staging / name)  # uint8 2-D: grayscale (L)
        inputs = (images.astype("float32") / 255.0).round(6).tolist()
        (staging / REQUEST_FILE).write_text(json.dumps({"inputs": inputs}), encoding="utf-8")
    return [Path(out_dir) / name for name in names]
