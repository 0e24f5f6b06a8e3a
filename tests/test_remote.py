"""A colleague gets the exact results without retraining: the team's DVC remote over a real SSH
server (Debian's sshd on 127.0.0.1, set up by deploy/dvc-remote.sh), two clones playing two team
members, A and B, sharing a bare git repository. README "Sharing results" walks the same path.

A's project (tiny, one epoch) is set up once per module: A ran `dvc repro`, then mlp2 at lr
0.05 and back (so the run-cache knows that run), `fashion-mlp share push`, and pushed to git.
"""

import hashlib
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from helpers.data import synthetic_split, tiny_params, write_params, write_synthetic_raw
from helpers.filesystems import small_tmpfs
from helpers.process import CLI, run, stage_env
from helpers.projects import make_project, stages_run
from helpers.ssh import SshRemote, key_pair, ssh_remote

pytestmark = [pytest.mark.dvc, pytest.mark.server]


@dataclass
class Team:
    remote: SshRemote
    origin: Path  # the bare git repository both members push to and pull from
    a: Path  # member A's project
    lr_005: dict[str, bytes]  # what mlp2 at lr 0.05 gave A: output path -> bytes

    def member(self, folder: Path) -> Path:
        """Member B: a clone of origin, with B's key for the remote (never in git)."""
        run(["git", "clone", "-q", str(self.origin), str(folder)], folder.parent)
        keyfile = str(self.remote.keyfile)
        run(["dvc", "remote", "modify", "--local", "team", "keyfile", keyfile], folder)
        return folder


def set_lr(project: Path, lr: float | None) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    if lr is None:
        params["models"]["mlp2"].pop("lr", None)
    else:
        params["models"]["mlp2"]["lr"] = lr
    write_params(project / "params.yaml", params)


def outputs_of_mlp2(project: Path) -> dict[str, bytes]:
    paths = [
        "models/mlp2/model.safetensors",
        "models/mlp2/history.csv",
        "models/mlp2/test_logits.safetensors",
        "metrics/mlp2.json",
    ]
    return {path: (project / path).read_bytes() for path in paths}


def share(command: str, project: Path, remote: SshRemote) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CLI, "share", command],
        cwd=project,
        env=stage_env(**remote.env()),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def team(tmp_path_factory) -> Iterator[Team]:
    base = tmp_path_factory.mktemp("team")
    checksums = write_synthetic_raw(base / "source")
    params = tiny_params(base / "source", checksums, "sqlite:///mlflow.db")
    params["train"]["epochs"] = 1
    params["mlflow"]["champion"] = "mlp1"
    with ssh_remote(base / "ssh") as remote:
        a = make_project(base / "a", params)
        env = remote.env()
        # As README "Sharing results" sets it up: the remote in git, verified downloads, the
        # member's key in .dvc/config.local only.
        run(["dvc", "remote", "add", "-d", "team", remote.url], a)
        run(["dvc", "remote", "modify", "team", "verify", "true"], a)
        run(["dvc", "remote", "modify", "--local", "team", "keyfile", str(remote.keyfile)], a)
        run(["dvc", "repro"], a, env)
        set_lr(a, 0.05)
        run(["dvc", "repro"], a, env)
        lr_005 = outputs_of_mlp2(a)
        set_lr(a, None)
        run(["dvc", "repro"], a, env)  # back: restored from A's own run-cache
        pushed = share("push", a, remote)
        assert pushed.returncode == 0, pushed.stderr
        run(["git", "add", "-A"], a)
        run(["git", "commit", "-qm", "A's results"], a)
        origin = base / "origin.git"
        run(["git", "init", "-q", "--bare", str(origin)], base)
        run(["git", "remote", "add", "origin", str(origin)], a)
        run(["git", "push", "-q", "origin", "HEAD:main"], a)
        run(["git", "symbolic-ref", "HEAD", "refs/heads/main"], origin)
        yield Team(remote, origin, a, lr_005)


def test_a_colleague_pulls_the_results_and_reproduces_nothing(team, tmp_path):
    b = team.member(tmp_path / "b")
    pulled = share("pull", b, team.remote)
    assert pulled.returncode == 0, pulled.stderr
    output = run(["dvc", "repro"], b, team.remote.env())
    assert stages_run(output) == set() and "Data and pipelines are up to date." in output
    assert run(["git", "status", "--porcelain"], b) == ""
    image = b / "garment.png"
    Image.fromarray(synthetic_split(1, seed=3)[0][0]).save(image)
    predicted = run([CLI, "predict", str(image), "--model", "models/mlp1/model.safetensors"], b)
    assert predicted.startswith("model: checkpoint models/mlp1/model.safetensors")


def test_params_a_colleague_already_ran_are_restored_not_retrained(team, tmp_path):
    """B asks for what A ran (mlp2 at lr 0.05): the run-cache entry and its outputs come from
    the remote, byte-identical to A's; only the cheap stages whose outputs live in git run."""
    b = team.member(tmp_path / "b")
    assert share("pull", b, team.remote).returncode == 0
    set_lr(b, 0.05)
    output = run(["dvc", "repro", "--pull"], b, team.remote.env())
    assert "Stage 'train@mlp2' is cached - skipping run" in output
    assert "Stage 'evaluate@mlp2' is cached - skipping run" in output
    assert stages_run(output) == {"compare"}
    assert outputs_of_mlp2(b) == team.lr_005


def test_an_experiment_pushed_by_one_is_pulled_shown_and_applied_by_the_other(team, tmp_path):
    a = Path(shutil.copytree(team.a, tmp_path / "a", symlinks=True))
    env = team.remote.env()
    run(["dvc", "exp", "run", "-n", "lr-03", "--temp", "-S", "++models.mlp2.lr=0.3"], a, env)
    run(["dvc", "exp", "push", "origin", "lr-03"], a, env)
    b = team.member(tmp_path / "b")
    run(["dvc", "exp", "pull", "origin", "lr-03"], b, env)
    shown = json.loads(run(["dvc", "exp", "show", "--json"], b, env))
    names = {exp["name"] for entry in shown for exp in entry.get("experiments") or []}
    assert "lr-03" in names
    run(["dvc", "exp", "apply", "lr-03"], b, env)
    assert yaml.safe_load((b / "params.yaml").read_text())["models"]["mlp2"]["lr"] == 0.3
    output = run(["dvc", "repro"], b, env)  # the experiment's outputs arrived with it
    assert stages_run(output) == set(), output


def big_output(project: Path, megabytes: int) -> str:
    """A tracked data file of random bytes (as a dataset the team shares): its MD5."""
    content = np.random.default_rng(0).bytes(megabytes << 20)
    (project / "data/big.bin").write_bytes(content)
    run(["dvc", "add", "data/big.bin"], project)
    return hashlib.md5(content).hexdigest()


def test_faults_are_one_line_naming_the_remote_and_a_retry_completes(team, tmp_path):
    a = Path(shutil.copytree(team.a, tmp_path / "a", symlinks=True))
    remote = team.remote
    url = remote.url
    md5 = big_output(a, 64)

    def failed_push(expected: str) -> None:
        done = share("push", a, remote)
        assert done.returncode == 1, done.stdout
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith(f"error: DVC remote 'team' ({url}): "), line
        assert expected in line, line

    remote.stop()
    failed_push("cannot connect to 127.0.0.1:")
    remote.start()
    run(["dvc", "remote", "modify", "--local", "team", "keyfile", str(key_pair(tmp_path / "k"))], a)
    failed_push("the server refused the key; point DVC at one it authorizes: dvc remote modify")
    run(["dvc", "remote", "modify", "--local", "team", "keyfile", str(remote.keyfile)], a)

    # Stopped mid-push: sshd and its sessions die once the big file starts arriving.
    pushing = subprocess.Popen(
        [CLI, "share", "push"],
        cwd=a,
        env=stage_env(**remote.env()),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not any(remote.storage.rglob("*.tmp*")) and not any(remote.storage.rglob(md5[2:])):
        assert time.monotonic() < deadline and pushing.poll() is None, pushing.communicate()
        time.sleep(0.01)
    remote.stop()
    _, stderr = pushing.communicate(timeout=120)
    assert pushing.returncode == 1
    (line,) = stderr.strip().splitlines()
    assert line.startswith(f"error: DVC remote 'team' ({url}): "), line
    # Nothing local was lost, and a retry completes.
    assert hashlib.md5((a / "data/big.bin").read_bytes()).hexdigest() == md5
    remote.start()
    assert share("push", a, remote).returncode == 0
    assert (remote.storage / "files/md5" / md5[:2] / md5[2:]).is_file()


def test_a_full_remote_is_one_line_and_a_corrupted_object_is_refused_on_pull(team, tmp_path):
    a = Path(shutil.copytree(team.a, tmp_path / "a", symlinks=True))
    env = team.remote.env()
    md5 = big_output(a, 8)
    parent = Path(tempfile.mkdtemp(prefix="fashion-mlp-full-remote-"))
    parent.chmod(0o755)  # the remote's account reaches it (pytest's tmp folders are root's only)
    storage = parent / "dvc"
    with small_tmpfs(storage, "2m"):
        storage.chmod(0o777)  # and writes into it
        small = team.remote.url.replace(str(team.remote.storage), str(storage))
        run(["dvc", "remote", "add", "small", small], a)
        run(["dvc", "remote", "modify", "--local", "small", "keyfile", str(team.remote.keyfile)], a)
        done = subprocess.run(
            [CLI, "share", "push", "--remote", "small"],
            cwd=a,
            env=stage_env(**env),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 1
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith(f"error: DVC remote 'small' ({small}): the remote refused to write")
    assert hashlib.md5((a / "data/big.bin").read_bytes()).hexdigest() == md5

    # A corrupted object on the remote: DVC's hash check refuses it, and nothing is checked out.
    assert share("push", a, team.remote).returncode == 0
    run(["git", "add", "-A"], a)
    run(["git", "commit", "-qm", "a big file"], a)
    stored = team.remote.storage / "files/md5" / md5[:2] / md5[2:]
    stored.chmod(0o644)
    stored.write_bytes(b"not the bytes the hash names" + stored.read_bytes()[28:])
    b = Path(shutil.copytree(a, tmp_path / "b", symlinks=True))
    shutil.rmtree(b / ".dvc/cache")
    (b / "data/big.bin").unlink()
    done = subprocess.run(
        ["dvc", "pull", "data/big.bin"],
        cwd=b,
        env=stage_env(**env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert not (b / "data/big.bin").exists()


def test_with_the_team_server_a_promotion_finds_the_run_of_the_pulled_weights(
    team_server, tmp_path
):
    """A trains into the team's MLflow server and shares the files; B pulls them and promotes
    the champion: the registry takes A's run, which logged exactly those weights."""
    alice, bob = "alice-remote", "bob-remote"
    passwords = {user: team_server.add_user(user) for user in (alice, bob)}
    checksums = write_synthetic_raw(tmp_path / "source")
    params = tiny_params(tmp_path / "source", checksums, "sqlite:///mlflow.db")
    params["train"]["epochs"] = 1
    params["mlflow"] |= {"experiment": "team-remote", "champion": "mlp1"}
    with ssh_remote(tmp_path / "ssh") as remote:
        a = make_project(tmp_path / "a", params)
        run([CLI, "team-setup", "--user", alice, "--user", bob], a, env=team_server.as_admin())
        run(["dvc", "remote", "add", "-d", "team", remote.url], a)
        run(["dvc", "remote", "modify", "--local", "team", "keyfile", str(remote.keyfile)], a)
        alice_env = team_server.credentials(alice, passwords[alice]) | remote.env()
        run(["dvc", "repro"], a, env=alice_env)
        assert share("push", a, remote).returncode == 0
        run(["git", "add", "-A"], a)
        run(["git", "commit", "-qm", "A's results"], a)
        origin = tmp_path / "origin.git"
        run(["git", "clone", "-q", "--bare", str(a), str(origin)], tmp_path)
        team = Team(remote, origin, a, {})
        b = team.member(tmp_path / "b")
        bob_env = team_server.credentials(bob, passwords[bob]) | remote.env()
        assert share("pull", b, remote).returncode == 0
        promoted = run(["dvc", "repro", "--force", "--single-item", "register"], b, env=bob_env)
    assert f"by {alice}, logged model " in promoted, promoted
    assert "now points at version" in promoted or "already pointed at version" in promoted
