"""The same weights on every x86-64 CPU with AVX2, Intel or AMD (numerics.py, docs/numerics.md):
committed weight digests checked natively on whatever machine runs the suite (AVX-512 or
AVX2), and under QEMU emulating an AVX2-only Intel and an AVX2-only AMD CPU; every matrix kernel
giving the same weights; and numerics set by the caller honoured, never replaced.

`make check-numerics` runs this file and names the CPU. When a digest changes on purpose (a
change to what training computes), the failure prints the new digests to commit.
"""

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from hashlib import sha256
from pathlib import Path

import pytest

from fashion_mlp.numerics import NUMERICS_ENV, cpu_description
from helpers.data import PROJECT_ROOT, real_data_params, write_params
from helpers.markers import require
from helpers.process import CLI, stage_env
from helpers.projects import wide_project

# SHA-256 of models/MODEL/model.safetensors from `fashion-mlp train` on the real Fashion-MNIST,
# with the params.yaml entry of MODEL shortened as given: one model of each family.
REAL_DATA_GOLDENS = {
    "mlp1": ({"epochs": 2}, "5de0d36dc8149df6596c9a33767845b1abd30fbe3d9847ad680cdf16037ac134"),
    "mlp1_tanh": (
        {"epochs": 1},
        "184b69173e8b5cac188df0c8db7d49f6c980566a8bb81a6f927367b075a55e3b",
    ),
    "mlp_best": (
        {"epochs": 2, "warmup_epochs": 1},
        "cdf4cd2c2922a529309317ee3075ff0ba05b2853db06bf9e921965404e8d3160",
    ),
    "mlp_strong": (
        {"epochs": 1},
        "c56ea7ed8b5c80933943dde48171b33bde975029fc8c67d97b9fb9873e3ce98a",
    ),
}
# tests/helpers/golden_trainings.py's digests: every family, tiny, on synthetic data.
SYNTHETIC_GOLDENS = {
    "relu-sgd": "0e36101313c1b2dcb2fd8dcbbf0842f4623a84f67a75bc24db2f27063fd0afde",
    "sigmoid": "8e5dcd03cd2a3b9aa9072f1feadd0b97ddc5aefa9aca1d46b150ea56aed9d6a4",
    "tanh": "e2ad3241bcf065c687a67fbfb26885df98848484cbac615048ca7f6c78d71ef1",
    "elu": "d8f877041559259e8d1edf28182b9180d54df8de67a525a9315daf6f7a310fcb",
    "gelu": "c775ffad841e58ce51edea949692f5c14a96cbe9086a04be0eaec0922c84239e",
    "best-recipe": "072c891427fbe6673bf13832121fbb3a8c2450ad39a94ccccf2be0f7227a597d",
    "adam": "f2c69911c873f4c333d86fee40e4a740c7c4a956258d3240bb239202d9611a44",
}
# AVX2-only CPUs of both vendors, as QEMU's user mode emulates them (it has no AVX-512).
EMULATED_CPUS = ("Haswell", "EPYC-Rome")
GOLDEN_SCRIPT = PROJECT_ROOT / "tests/helpers/golden_trainings.py"


def without_numerics(**extra: str) -> dict[str, str]:
    """A stage's environment with none of our numerics variables set (the CLI sets them), plus
    `extra`."""
    return {k: v for k, v in stage_env().items() if k not in NUMERICS_ENV} | extra


def train(project: Path, model: str, out: str, env: dict[str, str]) -> str:
    """SHA-256 of the checkpoint `fashion-mlp train MODEL` writes with this environment."""
    done = subprocess.run(
        [
            CLI,
            "train",
            model,
            "--config",
            f"configs/{model}.json",
            "--no-progress",
            "--no-tracking",
            "--out-dir",
            out,
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return sha256((project / out / "model.safetensors").read_bytes()).hexdigest()


def golden_trainings(*prefix: str, threads: int = 1) -> dict[str, str]:
    done = subprocess.run(
        [*prefix, sys.executable, str(GOLDEN_SCRIPT), "--threads", str(threads)],
        env=without_numerics(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def differences(found: dict[str, str], expected: dict[str, str]) -> str:
    return "; ".join(
        f"{k}: {v} (committed {expected[k]})" for k, v in found.items() if v != expected[k]
    )


@pytest.mark.slow
def test_every_family_gives_the_committed_weights_here_at_one_and_three_threads():
    for threads in (1, 3):
        found = golden_trainings(threads=threads)
        assert found == SYNTHETIC_GOLDENS, (
            f"{cpu_description()}, {threads} threads: {differences(found, SYNTHETIC_GOLDENS)}"
        )


@pytest.mark.slow
def test_emulated_intel_and_amd_cpus_give_the_committed_weights():
    """QEMU runs the same binaries and reports the emulated CPU's vendor, model and flags to
    them, so MKL and torch take that CPU's code paths."""
    qemu = shutil.which("qemu-x86_64")
    require(qemu is not None, "QEMU user mode is missing (apt-get install qemu-user)")
    with ThreadPoolExecutor(len(EMULATED_CPUS)) as pool:
        found = dict(
            zip(
                EMULATED_CPUS,
                pool.map(lambda cpu: golden_trainings(qemu, "-cpu", cpu), EMULATED_CPUS),
                strict=True,
            )
        )
    for cpu, digests in found.items():
        assert digests == SYNTHETIC_GOLDENS, f"{cpu}: {differences(digests, SYNTHETIC_GOLDENS)}"


@pytest.mark.slow
def test_one_model_of_each_family_on_the_real_data_gives_the_committed_weights(tmp_path):
    params = real_data_params(epochs=1, models=tuple(REAL_DATA_GOLDENS))
    for model, (overrides, _) in REAL_DATA_GOLDENS.items():
        params["models"][model] |= overrides
    project = tmp_path / "project"
    project.mkdir()
    write_params(project / "params.yaml", params)
    env = without_numerics()
    for command in (["download"], ["preprocess"], ["configure"]):
        subprocess.run([CLI, *command], cwd=project, env=env, check=True, capture_output=True)
    found = {model: train(project, model, f"models/{model}", env) for model in REAL_DATA_GOLDENS}
    expected = {model: digest for model, (_, digest) in REAL_DATA_GOLDENS.items()}
    assert found == expected, f"{cpu_description()}: {differences(found, expected)}"


@pytest.mark.slow
def test_every_matrix_kernel_gives_the_same_weights_and_atens_avx512_code_would_not(tmp_path):
    """The kernel (AVX-512, AVX2, portable C) is a speed, never a result. The control shows
    that pinning ATen is real: its AVX-512 kernels round differently."""
    project = wide_project(tmp_path)
    ours = train(project, "mlp1", "ours", without_numerics())
    for kernel in ("avx2", "portable"):
        forced = without_numerics(FASHION_MLP_GEMM_KERNEL=kernel)
        assert train(project, "mlp1", kernel, forced) == ours, kernel
    if "avx512f" not in cpu_description():
        pytest.skip(f"no AVX-512 here for the control: {cpu_description()}")
    native = without_numerics(ATEN_CPU_CAPABILITY="avx512")
    assert train(project, "mlp1", "native", native) != ours, "the control shows nothing"


def test_numerics_the_caller_set_are_honoured_and_named_never_replaced():
    """MKL runs in the mode the caller chose, and the run's numerics tag says so. (That our
    mode is set where the caller chose none: the golden digests above, and the next tests.)"""
    script = (
        "from fashion_mlp.numerics import apply_numerics_env; apply_numerics_env(); "
        "from fashion_mlp.linalg import pin_numerics; print(pin_numerics())"
    )
    done = subprocess.run(
        [str(Path(CLI).parent / "python"), "-c", script],
        env=without_numerics(MKL_CBWR="AUTO,STRICT"),
        capture_output=True,
        text=True,
        check=True,
    )
    tag = done.stdout.strip()
    assert "mkl-AUTO,STRICT" in tag and "aten-avx2" in tag
    assert "(caller set MKL_CBWR=AUTO,STRICT: outputs may differ" in tag


@pytest.mark.slow  # two trainings in fresh processes: 15 s
def test_native_numerics_are_an_explicit_recorded_choice_that_trains_other_weights(tmp_path):
    """`train.numerics: native` (torch's fastest kernels for this CPU) trains with torch's own
    layers and MKL's AUTO mode, and says so in the run's `numerics` tag; its weights differ from
    the portable ones, which is why it is never the default."""
    import mlflow

    project = wide_project(tmp_path)
    weights = {}
    for numerics in ("portable", "native"):
        config = json.loads((project / "configs/mlp1.json").read_text())
        config["train"]["numerics"] = numerics
        (project / f"{numerics}.json").write_text(json.dumps(config))
        done = subprocess.run(
            [CLI, "train", "mlp1", "--config", f"{numerics}.json", "--out-dir", numerics],
            cwd=project,
            env=without_numerics(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        weights[numerics] = sha256((project / numerics / "model.safetensors").read_bytes())
    runs = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}").search_runs(
        ["1"], order_by=["attributes.start_time ASC"]
    )
    tags = {run.data.params["numerics"]: run.data.tags["numerics"] for run in runs}
    assert tags["portable"].startswith("gemm-") and "mkl-COMPATIBLE,STRICT" in tags["portable"]
    assert tags["native"].startswith("native gemm-torch ") and "mkl-AUTO" in tags["native"]
    assert weights["portable"].digest() != weights["native"].digest()


def test_train_says_in_one_line_that_the_callers_numerics_were_honoured(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from fashion_mlp.cli import app

    monkeypatch.chdir(wide_project(tmp_path))
    result = CliRunner().invoke(
        app,
        [
            *("train", "mlp1", "--config", "configs/mlp1.json"),
            *("--no-progress", "--no-tracking", "--out-dir", "out"),
        ],
        env={"MKL_CBWR": "AUTO,STRICT"},
    )
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if "MKL_CBWR=AUTO,STRICT" in line]
    assert len(notes) == 1 and "may differ from the committed" in notes[0], result.stderr


def test_the_cli_sets_our_numerics_where_the_caller_set_none():
    done = subprocess.run(
        [
            str(Path(CLI).parent / "python"),
            "-c",
            "import os; from typer.testing import CliRunner; from fashion_mlp.cli import app; "
            "CliRunner().invoke(app, ['configure', '--help']); "
            "print(os.environ['ATEN_CPU_CAPABILITY'], os.environ['MKL_CBWR'])",
        ],
        env=without_numerics(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.split() == [NUMERICS_ENV["ATEN_CPU_CAPABILITY"], NUMERICS_ENV["MKL_CBWR"]]
