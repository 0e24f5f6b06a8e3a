"""preprocess: IDX -> uint8 images and int64 labels; malformed input stops with no output."""

import gzip
import struct
import tracemalloc

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fashion_mlp.cli import app
from fashion_mlp.dataset import MAX_IMAGES, RAW_FILES
from fashion_mlp.errors import PipelineError
from fashion_mlp.preprocess import preprocess, read_idx_images
from fashion_mlp.splits import carve_validation, load_split
from helpers.data import synthetic_split


def test_tensors_have_the_documented_shapes_dtypes_and_content(tmp_path, synthetic_raw):
    source, _ = synthetic_raw
    preprocess(source, tmp_path / "processed")
    train, test = (
        load_split(tmp_path / "processed", "train"),
        load_split(tmp_path / "processed", "test"),
    )
    assert train.images.shape == (300, 28, 28) and train.images.dtype == torch.uint8
    assert train.labels.shape == (300,) and train.labels.dtype == torch.int64
    assert len(test) == 100
    expected_images, expected_labels = synthetic_split(300, seed=1)
    assert np.array_equal(train.images.numpy(), expected_images)
    assert np.array_equal(train.labels.numpy(), expected_labels)


def _rewrite(path, transform):
    path.write_bytes(gzip.compress(transform(gzip.decompress(path.read_bytes()))))


@pytest.mark.parametrize(
    ("role", "transform", "message"),
    [
        (
            "train_images",
            lambda d: struct.pack(">I", 0x0BAD) + d[4:],
            r"not a uint8 IDX file: magic number 00000bad, expected 00000801 \(labels\)",
        ),
        (
            "test_images",
            lambda d: d[: len(d) - 100],
            "the header says 100 x 28 x 28 = 78400 bytes of data, the file holds 78300",
        ),
        (
            "train_images",
            lambda d: d[:4] + struct.pack(">III", 300, 28 * 28, 1) + d[16:],
            r"expected images of shape N x 28 x 28, got \(300, 784, 1\)",
        ),
        (
            "test_labels",
            lambda d: b"\x00\x00\x08\x03" + d[4:],
            r"the header says 100 x \d+ x \d+ = \d+ bytes of data, more than a \d+-byte gzip file "
            r"can hold \(refused before decompressing\)",
        ),
        ("test_labels", lambda d: d[:4] + struct.pack(">I", 99) + d[8:107], "99 labels for 100"),
    ],
    ids=["bad-magic", "truncated", "wrong-shape", "labels-claim-3-dims", "count-mismatch"],
)
def test_malformed_idx_stops_with_the_file_named_and_no_partial_output(
    tmp_path, synthetic_raw, role, transform, message
):
    source, _ = synthetic_raw
    _rewrite(source / RAW_FILES[role], transform)
    with pytest.raises(PipelineError, match=message) as caught:
        preprocess(source, tmp_path / "processed")
    assert RAW_FILES[role] in str(caught.value)
    assert not (tmp_path / "processed").exists() or not any((tmp_path / "processed").iterdir())


def test_cli_preprocess_reports_counts(workdir, synthetic_raw):
    source, _ = synthetic_raw
    result = CliRunner().invoke(app, ["preprocess", "--raw-dir", str(source), "--out-dir", "out"])
    assert result.exit_code == 0, result.output
    assert "out/train.safetensors: 300 images" in result.output
    assert (workdir / "out" / "test.safetensors").exists()


def test_the_same_data_gives_the_same_files_in_every_folder(tmp_path, synthetic_raw):
    """torch.save wrote its temporary file's random name and a random id into every file: the
    same tensors came out as new bytes each time, so DVC reran every model for nothing."""
    source, _ = synthetic_raw
    preprocess(source, tmp_path / "first")
    preprocess(source, tmp_path / "second" / "elsewhere")
    for split in ("train", "test"):
        first = (tmp_path / "first" / f"{split}.safetensors").read_bytes()
        assert first == (tmp_path / "second/elsewhere" / f"{split}.safetensors").read_bytes()


def test_cli_preprocess_missing_raw_files_says_what_to_run(workdir):
    result = CliRunner().invoke(app, ["preprocess", "--raw-dir", "nothing-here"])
    assert result.exit_code == 1
    assert "not found; run `fashion-mlp download` first" in result.stderr


def peak_memory(function) -> tuple[object, int]:
    """(what `function` returned or raised, the peak bytes Python allocated meanwhile)."""
    tracemalloc.start()
    try:
        outcome = function()
    except PipelineError as err:
        outcome = err
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return outcome, peak


def test_a_small_gzip_claiming_millions_of_images_is_refused_before_decompressing(tmp_path):
    header = struct.pack(">HBBIII", 0, 0x08, 3, 5_000_000, 28, 28)
    path = tmp_path / "bomb-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(header + bytes(2_000_000)))
    outcome, peak = peak_memory(lambda: read_idx_images(path))
    assert isinstance(outcome, PipelineError)
    assert f"claims 5000000 items; Fashion-MNIST files hold at most {MAX_IMAGES}" in str(outcome)
    assert peak < 5_000_000

    header = struct.pack(">HBBIII", 0, 0x08, 3, 90_000, 28, 28)  # 70 MB claimed, 2 KB given
    path.write_bytes(gzip.compress(header + bytes(2_000)))
    outcome, peak = peak_memory(lambda: read_idx_images(path))
    assert "more than a" in str(outcome) and "refused before decompressing" in str(outcome)
    assert peak < 5_000_000


def test_reading_the_first_images_decompresses_only_those(tmp_path):
    """`predict --limit 1` on a large (legitimate) file reads one image, not all of them."""
    images = np.zeros((90_000, 28, 28), np.uint8)
    images[0, 5, 5] = 255
    path = tmp_path / "many-idx3-ubyte.gz"
    path.write_bytes(
        gzip.compress(struct.pack(">HBBIII", 0, 0x08, 3, *images.shape) + images.tobytes())
    )
    first, peak = peak_memory(lambda: read_idx_images(path, limit=1))
    assert first.shape == (1, 28, 28) and first[0, 5, 5] == 255
    assert peak < 5_000_000
    assert read_idx_images(path).shape == (90_000, 28, 28)


def _save_split(folder, images, labels, split="train"):
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({"images": images, "labels": labels}, folder / f"{split}.safetensors")


@pytest.mark.parametrize(
    ("images", "labels", "problem"),
    [
        (
            torch.rand(10, 28, 28),
            torch.arange(10),
            "images are float32, expected uint8",
        ),
        (torch.full((10, 28, 28), float("nan")), torch.arange(10), "images are float32"),
        (torch.zeros(10, 28, 28, dtype=torch.uint8), torch.arange(10) + 5, "labels range 5..14"),
        (torch.zeros(10, 28, 28, dtype=torch.uint8), -torch.arange(10), "labels range -9..0"),
        (torch.zeros(10, 784, dtype=torch.uint8), torch.arange(10), "shape (10, 784), expected N"),
        (torch.zeros(10, 28, 28, dtype=torch.uint8), torch.arange(9), "9 labels for 10 images"),
        (
            torch.zeros(10, 28, 28, dtype=torch.uint8),
            torch.arange(10).int(),
            "labels are int32",
        ),
    ],
    ids=["float-0-1", "nan", "labels-above-9", "negative-labels", "flat", "count", "int32"],
)
def test_processed_data_that_is_not_ours_is_refused_in_one_line(tmp_path, images, labels, problem):
    _save_split(tmp_path, images, labels)
    with pytest.raises(PipelineError) as caught:
        load_split(tmp_path, "train")
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'train.safetensors'}: ") and problem in message
    assert message.endswith("rerun `fashion-mlp preprocess` (or `dvc repro preprocess`)")


def test_a_file_that_is_not_a_split_at_all_is_refused(tmp_path):
    (tmp_path / "train.safetensors").write_bytes(b"certainly not a safetensors file")
    with pytest.raises(PipelineError, match=r"train.safetensors: not a processed split \("):
        load_split(tmp_path, "train")
    # A pickle is refused without being run: safetensors holds tensors only.
    torch.save({"images": torch.zeros(1)}, tmp_path / "train.safetensors")
    with pytest.raises(PipelineError, match=r"train.safetensors: not a processed split \("):
        load_split(tmp_path, "train")
    _save_split(tmp_path, torch.zeros(1), torch.zeros(1))
    from safetensors.torch import save_file

    save_file({"pixels": torch.zeros(1)}, tmp_path / "train.safetensors")
    with pytest.raises(
        PipelineError, match=r"expected tensors images and labels, got \['pixels'\]"
    ):
        load_split(tmp_path, "train")


def test_float_images_stop_the_train_stage_before_any_training(workdir, params):
    """Images already scaled to [0, 1] used to train to chance accuracy (0.10) with exit 0."""
    from helpers.data import declared_params, write_params
    from helpers.projects import configure_models

    _save_split(workdir / "data/processed", torch.rand(300, 28, 28), torch.arange(300) % 10)
    zeros = torch.zeros(100, 28, 28, dtype=torch.uint8)
    _save_split(workdir / "data/processed", zeros, torch.arange(100) % 10, split="test")
    configure_models(write_params(workdir / "params.yaml", params), workdir / "configs")
    write_params(workdir / "params.yaml", declared_params(params, "train", "mlp1"))
    result = CliRunner().invoke(
        app, ["train", "mlp1", "--config", "configs/mlp1.json", "--no-progress", "--no-tracking"]
    )
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: data/processed/train.safetensors: images are float32")
    assert not (workdir / "models").exists()


def test_the_validation_split_is_seeded_disjoint_and_complete(tmp_path, synthetic_raw):
    source, _ = synthetic_raw
    train = preprocess(source, tmp_path / "processed")["train"]
    rest, validation = carve_validation(train, 60, seed=3)
    assert (len(rest), len(validation)) == (240, 60)
    again_rest, again_validation = carve_validation(train, 60, seed=3)
    assert torch.equal(validation.images, again_validation.images)
    assert torch.equal(rest.labels, again_rest.labels)
    _, other = carve_validation(train, 60, seed=4)
    assert not torch.equal(validation.images, other.images)
    # Every training image is in exactly one part.
    together = torch.cat([rest.images, validation.images]).flatten(1)
    assert torch.equal(together.unique(dim=0), train.images.flatten(1).unique(dim=0))
    with pytest.raises(PipelineError, match="validation size 300 must be between 1 and 299"):
        carve_validation(train, 300, seed=0)
