"""register, predict and serving: the declared champion classifies images; nothing unsafe loads."""

import json
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fashion_mlp.dataset import CLASS_NAMES
from helpers.data import synthetic_split, write_params
from helpers.plants import plant_code_champion, plant_pickle_champion
from helpers.process import (
    VENV_BIN,
    free_port,
    heavy_modules_loaded,
    responds,
    stage_env,
    wait_until,
)

TEST_IMAGES, TEST_LABELS = synthetic_split(100, seed=2)


@pytest.fixture
def registered(evaluated):
    evaluated.use_params("register")
    result = evaluated.invoke("register")
    assert result.exit_code == 0, result.output
    return evaluated


def test_register_makes_the_declared_champion_champion_once(registered):
    import hashlib

    import mlflow

    champion = json.loads((registered.folder / "reports/champion.json").read_text())
    assert champion["model"] == registered.params["mlflow"]["champion"] == "mlp2"
    weights = (registered.folder / "models/mlp2/model.safetensors").read_bytes()
    assert champion["weights_sha256"] == hashlib.sha256(weights).hexdigest()
    metrics = json.loads((registered.folder / "metrics/mlp2.json").read_text())
    assert {key: champion[key] for key in metrics} == metrics
    client = mlflow.MlflowClient(registered.store)
    version = client.get_model_version_by_alias("fashion-mlp", "champion")
    # The version holds the LoggedModel that training logged, which carries its metrics.
    logged = client.get_logged_model(version.source.removeprefix("models:/"))
    assert logged.name == "mlp2" and logged.source_run_id == version.run_id
    assert logged.tags["fashion_mlp.weights_sha256"] == champion["weights_sha256"]
    assert {m.key for m in logged.metrics if m.dataset_name} == set(metrics)
    # Registering the same model again adds no version, and champion.json stays the same.
    before = (registered.folder / "reports/champion.json").read_bytes()
    again = registered.invoke("register")
    assert again.exit_code == 0 and "already pointed at version 1: mlp2" in again.output
    assert len(client.search_model_versions("name = 'fashion-mlp'")) == 1
    assert (registered.folder / "reports/champion.json").read_bytes() == before


def test_register_loads_mlflow_but_not_torch(evaluated):
    evaluated.use_params("register")
    assert heavy_modules_loaded(evaluated, "register") == {"mlflow"}


def png(path: Path, array: np.ndarray, mode: str = "L") -> Path:
    Image.fromarray(array).convert(mode).save(path)
    return path


def test_predict_classifies_png_and_idx_files_with_the_champion(registered):
    # mlp1 learns the synthetic classes in two epochs; make it the champion.
    registered.params["mlflow"]["champion"] = "mlp1"
    registered.use_params("register")
    assert registered.invoke("register").exit_code == 0
    write_params(registered.folder / "params.yaml", registered.params)
    index = 7
    image = png(registered.folder / "garment.png", TEST_IMAGES[index])
    idx_file = Path(registered.params["data"]["local_dir"]) / "t10k-images-idx3-ubyte.gz"
    result = registered.invoke("predict", str(image), str(idx_file), "--limit", "3")
    assert result.exit_code == 0, result.output
    answered, *lines = result.output.strip().splitlines()
    assert answered.startswith("model: fashion-mlp version 2: mlp1 (run ")
    assert lines[0].startswith(f"{image}: {CLASS_NAMES[TEST_LABELS[index]]} ")
    assert [line.split(": ")[0] for line in lines[1:]] == [f"{idx_file}[{i}]" for i in range(3)]
    for line, label in zip(lines[1:], TEST_LABELS[:3], strict=True):
        assert line.split(": ")[1].startswith(CLASS_NAMES[label])
        probabilities = [float(part.rsplit(" ", 1)[1]) for part in line.split(": ")[1].split(", ")]
        assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True)


def test_predict_with_a_local_checkpoint_needs_no_registry(trained):
    write_params(trained.folder / "params.yaml", trained.params)
    image = png(trained.folder / "garment.png", TEST_IMAGES[3])
    checkpoint = "models/mlp1/model.safetensors"
    result = trained.invoke("predict", str(image), "--model", checkpoint, "--top", "1")
    assert result.exit_code == 0, result.output
    answered, line = result.output.strip().splitlines()
    assert answered == f"model: checkpoint {checkpoint} (784-32-10 relu)"
    label, probability = line.removeprefix(f"{image}: ").rsplit(" ", 1)
    assert label == CLASS_NAMES[TEST_LABELS[3]] and 0.1 < float(probability) <= 1


def test_a_planted_pickle_champion_is_refused_and_never_runs(registered):
    marker = registered.folder / "payload-ran"
    plant_pickle_champion(registered.store, marker)
    write_params(registered.folder / "params.yaml", registered.params)
    image = png(registered.folder / "garment.png", TEST_IMAGES[0])
    result = registered.invoke("predict", str(image))
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(
        "error: refusing model models:/fashion-mlp@champion: not a model fashion-mlp trained "
        "(unexpected data/model.pth, data/pickle_module_info.txt); loading it could run code"
    )
    assert not marker.exists()


def test_a_planted_code_champion_is_refused_and_never_runs(registered):
    marker = registered.folder / "payload-ran"
    plant_code_champion(registered.store, marker)
    write_params(registered.folder / "params.yaml", registered.params)
    image = png(registered.folder / "garment.png", TEST_IMAGES[0])
    result = registered.invoke("predict", str(image))
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: refusing model models:/fashion-mlp@champion: ")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: png(p, np.zeros((32, 32), np.uint8)), "expected 28 x 28 pixels, got 32 x 32"),
        (lambda p: png(p, np.zeros((28, 28), np.uint8), "RGB"), "expected 8-bit grayscale"),
        (lambda p: p.write_text("not an image") and p, "not a readable image"),
        (
            lambda p: png(p, np.zeros((1, 1), np.uint8)).write_bytes(huge_png()) and p,
            "expected 28 x 28 pixels, refused before decoding: Image size (10000000000 pixels) "
            "exceeds limit of",
        ),
    ],
    ids=["wrong-size", "colour", "not-an-image", "decompression-bomb"],
)
def test_a_bad_image_is_one_clear_line(workdir, params, make, message):
    write_params(workdir / "params.yaml", params)
    path = workdir / "bad.png"
    make(path)
    from typer.testing import CliRunner

    from fashion_mlp.cli import app

    result = CliRunner().invoke(app, ["predict", str(path), "--model", "unused"])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {path}: {message}")
    assert len(result.stderr.strip().splitlines()) == 1


def huge_png() -> bytes:
    """A 100,000 x 100,000 grayscale PNG header (10 GB of pixels claimed) with a tiny body."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\x00" * 1000)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )


@pytest.mark.server
def test_mlflow_serves_the_champion_over_http_and_refuses_a_pickle_one(registered):
    """The README's serve command, with pickle loading off: the real champion answers; after a
    pickle model is planted as champion, the server refuses to load it and the payload never
    runs."""
    registered.params["mlflow"]["champion"] = "mlp1"
    registered.use_params("register")
    assert registered.invoke("register").exit_code == 0
    # The README's command: the server starts `uvicorn` by name (stage_env puts the venv first).
    env = stage_env(
        MLFLOW_TRACKING_URI=registered.store, MLFLOW_ALLOW_PICKLE_DESERIALIZATION="false"
    )

    def serve(port: int) -> subprocess.Popen:
        return subprocess.Popen(
            [
                *(
                    str(VENV_BIN / "mlflow"),
                    "models",
                    "serve",
                    "-m",
                    "models:/fashion-mlp@champion",
                ),
                *("--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    port = free_port()
    server = serve(port)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: responds(f"{url}/ping"), "mlflow models serve", None, process=server)
        index = 11
        pixels = (TEST_IMAGES[index : index + 1] / 255.0).astype(np.float32).tolist()
        request = urllib.request.Request(
            f"{url}/invocations",
            data=json.dumps({"inputs": pixels}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            logits = json.loads(response.read())["predictions"]
        assert int(np.argmax(logits[0])) == TEST_LABELS[index]
    finally:
        server.terminate()
        server.wait(timeout=30)

    marker = registered.folder / "payload-ran"
    plant_pickle_champion(registered.store, marker)
    refused = serve(free_port())
    output, _ = refused.communicate(timeout=120)
    assert refused.returncode != 0
    assert "Deserializing model using pickle is disallowed" in output
    assert not marker.exists()
