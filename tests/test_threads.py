"""The thread policy: a fair share of the cores per training, and the same weights whatever the
share, alone, two at once, or with a fixed count (numerics.py: products and batch statistics
that sum in a fixed order). The CPU half of the numerics is tested in test_numerics.py."""

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fashion_mlp.errors import PipelineError
from fashion_mlp.threads import CoreShare, available_cores, threads_for
from helpers.markers import require
from helpers.process import CLI, stage_env
from helpers.projects import wide_project as make_wide_project


@pytest.mark.parametrize(
    ("cores", "trainings", "threads"),
    [(2, 1, 2), (2, 2, 1), (2, 3, 1), (8, 3, 2), (16, 4, 4), (1, 1, 1), (4, 0, 4)],
)
def test_each_training_gets_a_fair_share_of_the_cores_and_at_least_one(cores, trainings, threads):
    assert threads_for(cores, trainings) == threads


def test_registered_trainings_are_counted_and_a_dead_ones_entry_is_dropped(tmp_path):
    registry = tmp_path / "cores"
    # A process that registers, then dies without cleaning up (SIGKILL).
    script = textwrap.dedent(
        f"""
        import os, signal
        from fashion_mlp.threads import CoreShare
        share = CoreShare({str(registry)!r}).__enter__()
        print("registered", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert len(list(registry.glob("*.training"))) == 1
    with CoreShare(registry) as first, CoreShare(registry) as second:
        assert first.live_trainings() == 2  # the dead process's entry is gone
        assert len(list(registry.glob("*.training"))) == 2
        assert second.rebalance(force=True) == threads_for(available_cores(), 2)
    assert list(registry.glob("*.training")) == []
    with CoreShare(registry) as alone:
        assert alone.rebalance(force=True) == available_cores()


def test_a_registry_folder_someone_else_can_write_is_refused(tmp_path):
    """Another local user who could write there could plant a FIFO that froze every
    training's next check, or register fake trainings to starve it of cores."""
    registry = tmp_path / "cores"
    registry.mkdir()
    registry.chmod(0o777)
    with pytest.raises(PipelineError, match=r"cores: the training core registry must be a folder"):
        CoreShare(registry).__enter__()
    registry.chmod(0o700)
    os.mkfifo(registry / "planted.training")
    with CoreShare(registry) as share:  # the FIFO is skipped, never opened for reading
        assert share.live_trainings() == 1


SQUATTER = "fashion-mlp-squatter"


def as_other_user(command: list[str]) -> list[str]:
    """`command` as a second local account, created on first use (needs root)."""
    if subprocess.run(["id", SQUATTER], capture_output=True).returncode != 0:
        made = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SQUATTER],
            capture_output=True,
            text=True,
        )
        require(made.returncode == 0, f"cannot add a second user: {made.stderr.strip()}")
    return ["runuser", "-u", SQUATTER, "--", *command]


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder like /tmp (anyone may create, nobody may remove another's), reachable by every
    user: pytest's own tmp_path is private to this one."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="fashion-mlp-shared-", dir="/tmp"))
    folder.chmod(0o1777)
    yield folder
    shutil.rmtree(folder)


@pytest.mark.slow
def test_a_registry_another_user_planted_stops_a_training_with_one_line(wide_project, shared_tmp):
    """The default registry's path is predictable: another user can create it first, holding
    a FIFO that used to freeze the victim's training before its first batch."""
    planted = shared_tmp / f"fashion-mlp-{os.getuid()}" / "trainings"
    for step in (["mkdir", "-p", "-m", "0755", str(planted)], ["mkfifo", str(planted / "x")]):
        subprocess.run(as_other_user(step), check=True)
    env = {k: v for k, v in stage_env(TMPDIR=str(shared_tmp)).items() if k != "XDG_RUNTIME_DIR"}
    command = [
        CLI,
        "train",
        "mlp1",
        "--config",
        "configs/mlp1.json",
        "--no-progress",
        "--no-tracking",
        "--out-dir",
        "out",
    ]
    # The timeout turns the old hang into a failure.
    done = subprocess.run(
        command, cwd=wide_project, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: {planted.parent}: the training core registry must be a folder of yours that "
        f"nobody else can write (owner uid {planted.stat().st_uid}, mode drwxr-xr-x); remove "
        "it, or set FASHION_MLP_CORE_REGISTRY to a private folder"
    ]
    assert not (wide_project / "out").exists()


def test_a_fixed_thread_count_is_used_as_given_without_registering(tmp_path):
    with CoreShare(tmp_path / "cores", fixed_threads=1) as share:
        assert share.rebalance(force=True) == 1 and torch.get_num_threads() == 1
        assert not (tmp_path / "cores").exists()
    torch.set_num_threads(available_cores())


@pytest.fixture
def wide_project(tmp_path) -> Path:
    return make_wide_project(tmp_path)


def train(project: Path, out: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            CLI,
            "train",
            "mlp1",
            "--config",
            "configs/mlp1.json",
            "--no-progress",
            "--no-tracking",
            "--out-dir",
            out,
        ],
        cwd=project,
        env=stage_env(FASHION_MLP_CORE_REGISTRY=str(project / "cores"), **env),
        stderr=subprocess.PIPE,
        text=True,
    )


def weights(project: Path, out: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(project / out / "model.safetensors")


@pytest.mark.slow
def test_same_weights_bit_for_bit_alone_two_at_once_and_with_any_thread_count(wide_project):
    runs = {"one-thread": {"FASHION_MLP_THREADS": "1"}, "two-threads": {"FASHION_MLP_THREADS": "2"}}
    for out, env in runs.items():
        process = train(wide_project, out, **env)
        assert process.wait(timeout=300) == 0, process.stderr.read()
    # Two at once under the fair-share policy, as `dvc queue start -j 2` runs them.
    together = [train(wide_project, out) for out in ("together-a", "together-b")]
    for process in together:
        assert process.wait(timeout=300) == 0, process.stderr.read()
    reference = weights(wide_project, "one-thread")
    for out in ("two-threads", "together-a", "together-b"):
        for name, value in weights(wide_project, out).items():
            assert torch.equal(value, reference[name]), (out, name)


@pytest.mark.slow
def test_with_torchs_own_layers_the_thread_count_changes_the_weights(wide_project):
    """The control: what the policy protects against is real on this machine. torch's Linear
    (MKL's products) and BatchNorm1d (per-thread partial sums) give other weights with 2
    threads than with 1."""
    script = textwrap.dedent(
        """
        import hashlib, sys, torch
        from torch import nn
        from fashion_mlp.splits import load_split
        torch.set_num_threads(int(sys.argv[1]))
        torch.manual_seed(0)
        data = load_split("data/processed", "train")
        model = nn.Sequential(
            nn.Flatten(), nn.Linear(784, 1024), nn.BatchNorm1d(1024), nn.ReLU(),
            nn.Linear(1024, 10),
        )
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        x = data.images.float() / 255
        for batch in torch.arange(len(data)).split(256):
            loss = torch.nn.functional.cross_entropy(model(x[batch]), data.labels[batch])
            optimizer.zero_grad(); loss.backward(); optimizer.step()
        state = b"".join(p.detach().numpy().tobytes() for p in model.parameters())
        print(hashlib.md5(state).hexdigest())
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    digests = [
        subprocess.run(
            [sys.executable, "-c", script, threads],
            cwd=wide_project,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for threads in ("1", "2")
    ]
    assert digests[0] != digests[1]
