"""register, predict and serving: the best model becomes `champion` and classifies images."""

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import (
    VENV_BIN,
    declared_params,
    free_port,
    stage_env,
    synthetic_split,
    write_params,
)
from fashion_mlp.cli import app
from fashion_mlp.preprocess import CLASS_NAMES

TEST_IMAGES, TEST_LABELS = synthetic_split(100, seed=2)


@pytest.fixture
def registered(evaluated, params):
    write_params(evaluated / "params.yaml", declared_params(params, "register"))
    result = CliRunner().invoke(app, ["register"])
    assert result.exit_code == 0, result.output
    return evaluated


def test_register_makes_the_most_accurate_model_champion(registered, params):
    import mlflow

    scores = {
        m: json.loads((registered / f"metrics/{m}.json").read_text())["test_acc"]
        for m in ("mlp1", "mlp2")
    }
    champion = json.loads((registered / "reports/champion.json").read_text())
    assert champion["model"] == max(scores, key=scores.get)
    assert champion["uri"] == "models:/fashion-mlp@champion"
    mlflow.set_tracking_uri(params["mlflow"]["tracking_uri"])
    version = mlflow.MlflowClient().get_model_version_by_alias("fashion-mlp", "champion")
    assert version.run_id == champion["run_id"]
    run_json = registered / f"models/{champion['model']}/run.json"
    assert json.loads(run_json.read_text())["run_id"] == champion["run_id"]


def png(path: Path, array: np.ndarray, mode: str = "L") -> Path:
    Image.fromarray(array).convert(mode).save(path)
    return path


def test_predict_classifies_png_and_idx_files_with_the_champion(registered, params):
    write_params(registered / "params.yaml", params)
    index = 7
    image = png(registered / "garment.png", TEST_IMAGES[index])
    idx_file = Path(params["data"]["local_dir"]) / "t10k-images-idx3-ubyte.gz"
    result = CliRunner().invoke(app, ["predict", str(image), str(idx_file), "--limit", "3"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith(f"{image}: {CLASS_NAMES[TEST_LABELS[index]]} ")
    assert [line.split(": ")[0] for line in lines[1:]] == [f"{idx_file}[{i}]" for i in range(3)]
    for line, label in zip(lines[1:], TEST_LABELS[:3], strict=True):
        assert line.split(": ")[1].startswith(CLASS_NAMES[label])
        probabilities = [float(part.rsplit(" ", 1)[1]) for part in line.split(": ")[1].split(", ")]
        assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True)


def test_predict_with_a_local_checkpoint_needs_no_registry(registered, params):
    write_params(registered / "params.yaml", params)
    image = png(registered / "garment.png", TEST_IMAGES[3])
    result = CliRunner().invoke(
        app, ["predict", str(image), "--model", "models/mlp1/model.pt", "--top", "1"]
    )
    assert result.exit_code == 0, result.output
    assert (
        result.output.strip()
        == f"{image}: {CLASS_NAMES[TEST_LABELS[3]]} " + (result.output.strip().rsplit(" ", 1)[1])
    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: png(p, np.zeros((32, 32), np.uint8)), "expected 28 x 28 pixels, got 32 x 32"),
        (lambda p: png(p, np.zeros((28, 28), np.uint8), "RGB"), "expected 8-bit grayscale"),
        (lambda p: p.write_text("not an image") and p, "not a readable image"),
    ],
    ids=["wrong-size", "colour", "not-an-image"],
)
def test_a_bad_image_is_one_clear_line(workdir, params, make, message):
    write_params(workdir / "params.yaml", params)
    path = workdir / "bad.png"
    make(path)
    result = CliRunner().invoke(app, ["predict", str(path), "--model", "unused"])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {path}: {message}")
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_mlflow_serves_the_champion_over_http(registered, params):
    port = free_port()
    # The server starts `uvicorn` by name: stage_env puts the venv's bin on PATH.
    env = stage_env(MLFLOW_TRACKING_URI=params["mlflow"]["tracking_uri"])
    mlflow_cli = str(VENV_BIN / "mlflow")
    server = subprocess.Popen(
        [
            *(mlflow_cli, "models", "serve", "-m", "models:/fashion-mlp@champion"),
            *("--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert server.poll() is None, "mlflow models serve exited"
                assert time.monotonic() < deadline, "server did not come up in 120 s"
                time.sleep(0.5)
        index = 11
        pixels = (TEST_IMAGES[index : index + 1] / 255.0).astype(np.float32).tolist()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": pixels}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            logits = json.loads(response.read())["predictions"]
        assert int(np.argmax(logits[0])) == TEST_LABELS[index]
    finally:
        server.terminate()
        server.wait(timeout=30)
