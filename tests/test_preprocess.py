"""preprocess: IDX -> uint8 images and int64 labels; malformed input stops with no output."""

import gzip
import struct

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import synthetic_split
from fashion_mlp.cli import app
from fashion_mlp.download import RAW_FILES
from fashion_mlp.errors import PipelineError
from fashion_mlp.preprocess import load_split, preprocess


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
            r"the header says 100 x \d+ x \d+ = \d+ bytes of data, the file holds 92$",
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
    assert "out/train.pt: 300 images" in result.output
    assert (workdir / "out" / "test.pt").exists()


def test_cli_preprocess_missing_raw_files_says_what_to_run(workdir):
    result = CliRunner().invoke(app, ["preprocess", "--raw-dir", "nothing-here"])
    assert result.exit_code == 1
    assert "not found; run `fashion-mlp download` first" in result.stderr
