"""The same weights on every x86-64 machine with AVX2: the numerics of numerics.py, checked on
this machine by forcing the AVX2 code paths, and across machines by a committed weight hash.

The golden hash came from `fashion-mlp train` of mlp1 (2 epochs of d2l's recipe on the real
Fashion-MNIST) on an AMD EPYC with AVX-512; it also matched under QEMU emulating AVX2-only AMD
EPYC CPUs (docs/numerics.md). Every CI run checks it on whatever machine it gets.
"""

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from fashion_mlp.numerics import NUMERICS_ENV, cpu_description
from helpers.data import real_data_params, write_params
from helpers.process import CLI, stage_env
from helpers.projects import wide_project

# SHA-256 of models/mlp1/model.safetensors after 2 epochs of mlp1 (d2l: SGD lr 0.1, batch 256,
# normal(0, 0.01), seed 0) on the real data, with the numerics of numerics.py.
GOLDEN_MLP1_2_EPOCHS = "fae8aeec2f0b80dae3dabf558e5eca163ab4e337ddc39e9375ec98cb8aa1657d"
# What an AVX2-only machine runs: every library's dispatch held to AVX2 at most.
AVX2_ONLY = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "MKL_CBWR": "AVX2,STRICT",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
}


def has_avx512() -> bool:
    return "avx512f" in Path("/proc/cpuinfo").read_text()


def train(project: Path, out: str, env: dict[str, str]) -> str:
    """SHA-256 of the checkpoint `fashion-mlp train mlp1` writes with this environment."""
    done = subprocess.run(
        [CLI, "train", "mlp1", "--no-progress", "--no-tracking", "--out-dir", out],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return hashlib.sha256((project / out / "model.safetensors").read_bytes()).hexdigest()


def without_numerics() -> dict[str, str]:
    """A stage's environment with none of our numerics variables set."""
    return {k: v for k, v in stage_env().items() if k not in {*NUMERICS_ENV, *AVX2_ONLY}}


@pytest.mark.slow
def test_forcing_avx2_changes_nothing_under_our_numerics_and_something_without(tmp_path):
    """On an AVX-512 machine: our numerics give the weights an AVX2-only machine gives (every
    library held to AVX2), and the control shows the forcing is real: with ATen's own choice
    of AVX-512 kernels the weights differ."""
    if not has_avx512():
        pytest.skip(f"this CPU has no AVX-512 to force down from: {cpu_description()}")
    project = wide_project(tmp_path)
    ours = train(project, "ours", without_numerics())  # the CLI sets NUMERICS_ENV itself
    forced = train(project, "forced", without_numerics() | AVX2_ONLY)
    assert ours == forced
    native = train(project, "native", without_numerics() | {"ATEN_CPU_CAPABILITY": "avx512"})
    assert native != ours, "AVX-512 kernels rounded like AVX2 ones: the control shows nothing"


def test_the_cli_runs_with_our_numerics_whatever_the_caller_set(tmp_path):
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


@pytest.mark.slow
def test_two_epochs_of_mlp1_on_the_real_data_give_the_committed_weights(tmp_path):
    params = real_data_params(epochs=2, models=("mlp1",))
    project = tmp_path / "project"
    project.mkdir()
    write_params(project / "params.yaml", params)
    env = without_numerics()
    for command in (["download"], ["preprocess"], ["configure"]):
        subprocess.run([CLI, *command], cwd=project, env=env, check=True, capture_output=True)
    digest = train(project, "models/mlp1", env)
    assert digest == GOLDEN_MLP1_2_EPOCHS, (
        f"on {cpu_description()} ({os.uname().machine}) the weights differ from the committed "
        "ones: README 'Results' says which CPUs give the same numbers"
    )
