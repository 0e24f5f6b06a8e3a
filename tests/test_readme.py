"""The README's commands run as written, top to bottom, in a new shell, from a folder whose path
has a space and a non-ASCII letter (where the Makefile's unquoted paths used to break).

Every command in the sections "Quick start", "Using the champion" and "Changing params" is run:
each line of their ```bash blocks and each inline `command` that starts with a program the
README tells users to run (a program's name alone is not a command). A command with an
UPPERCASE placeholder (MODEL, NAME, N) or an ellipsis is illustrative, as the README says, and
skipped. Long targets (`make test`, `make bench`, `make
sweep`, `make test-fast`) are checked with `make -n`; `make ui` and `fashion-mlp serve` are
started, reached over HTTP and stopped; `dvc queue status` is repeated until the queue is done.
The trainings are the README's on tiny synthetic data (tests/helpers/data.py's tiny_params: two
models, 2 epochs), so the commands are the README's exactly. After them, each experiment
changed only what it says, and the promotion moved the registry to the promoted weights.
"""

import json
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers.data import PROJECT_ROOT, tiny_params, write_synthetic_raw
from helpers.process import VENV_BIN, free_port, responds, wait_until
from helpers.projects import make_project

CHECKED_SECTIONS = ("Quick start", "Using the champion", "Changing params")
PROGRAMS = ("make", "fashion-mlp", "dvc", "mlflow", "curl", "python", "source")
PLACEHOLDER = re.compile(r"(?<![\w./-])[A-Z]+(?![\w-])|…|\.\.\.")
DRY_TARGETS = {"test", "test-fast", "bench", "sweep"}
ACTIVATE = "source .venv/bin/activate"


def sections(text: str, wanted: tuple[str, ...]) -> list[str]:
    """The body of each wanted section, subsections included, in README order."""
    found, current, level = [], None, 0
    for line in text.splitlines():
        heading = re.match(r"(#+) (.+?)\s*$", line)
        if heading and (current is None or len(heading.group(1)) <= level):
            current = None
            if heading.group(2) in wanted:
                current, level = [], len(heading.group(1))
                found.append(current)
            continue
        if current is not None:
            current.append(line)
    return ["\n".join(body) for body in found]


def commands(body: str) -> list[str]:
    """The commands a section shows, in order: fenced bash lines and inline commands."""
    shown = []
    for fence, inline in re.findall(r"```bash\n(.*?)```|`([^`\n]+)`", body, flags=re.S):
        if fence:
            for line in fence.replace("\\\n", " ").splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    shown.append(line.strip())
        elif inline.split()[0] in PROGRAMS and " " in inline and not PLACEHOLDER.search(inline):
            shown.append(inline)
    return shown


def readme_commands() -> list[str]:
    text = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    found = sections(text, CHECKED_SECTIONS)
    assert len(found) == len(CHECKED_SECTIONS), "a checked README section was renamed"
    return [command for body in found for command in commands(body)]


@dataclass
class Shell:
    """A new shell in the workspace: no venv on PATH until the README activates it."""

    folder: Path
    env: dict[str, str]
    activated: bool = False

    def line(self, command: str) -> str:
        return f"{ACTIVATE} && {command}" if self.activated else command

    def run(self, command: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "-c", self.line(command)],
            cwd=self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=900,
        )

    def start(self, command: str, log: Path) -> subprocess.Popen:
        with open(log, "w") as sink:
            return subprocess.Popen(
                ["bash", "-c", self.line(f"exec {command}")],
                cwd=self.folder,
                env=self.env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )


def new_shell_env() -> dict[str, str]:
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != str(VENV_BIN))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DVC_", "MLFLOW_", "FASHION_MLP_", "RAY_", "VIRTUAL_ENV"))
        # `make test` runs this suite: its MAKELEVEL and MAKEFLAGS would make every `make` the
        # README shows print "make[1]: Entering directory", which a newcomer's shell never sees.
        and k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES")
    }
    identity = {
        f"GIT_{role}_{key}": value
        for role in ("AUTHOR", "COMMITTER")
        for key, value in (("NAME", "a newcomer"), ("EMAIL", "newcomer@example.com"))
    }
    return env | identity | {"PATH": path, "DVC_NO_ANALYTICS": "true"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A clone-like copy of the project in `my wörk/fashion-mlp`, on tiny synthetic data, with
    the suite's venv linked in (an install would take minutes) and committed, as after a clone."""
    base = tmp_path_factory.mktemp("readme") / "my wörk"
    base.mkdir()
    checksums = write_synthetic_raw(base / "source")
    folder = make_project(
        base / "fashion-mlp", tiny_params(base / "source", checksums, "sqlite:///mlflow.db")
    )
    for name in ("Makefile", "pyproject.toml", "constraints.txt", "MLproject", "README.md"):
        shutil.copy(PROJECT_ROOT / name, folder)
    (folder / ".venv").symlink_to(PROJECT_ROOT / ".venv")
    # The venv's install stamp must stay newer than what it was installed from.
    installed = (PROJECT_ROOT / ".venv/.installed").stat().st_mtime
    for name in ("pyproject.toml", "constraints.txt", "src/fashion_mlp/_sequential_gemm.c"):
        os.utime(folder / name, (installed - 60, installed - 60))
    (folder / ".gitignore").write_text("/.venv\n/mlflow.db*\n/mlartifacts/\n/samples/\n")
    env = new_shell_env()
    for command in ("git add -A", "git commit -q -m 'as cloned'"):
        subprocess.run(["bash", "-c", command], cwd=folder, env=env, check=True)
    return folder


def queue_done(shell: Shell) -> bool:
    status = shell.run("dvc queue status")
    assert status.returncode == 0 and "Failed" not in status.stdout, status.stdout
    return re.search(r"\b(Queued|Running)\b", status.stdout) is None


def serving() -> bool:
    return responds("http://127.0.0.1:5001/ping")


def reach_and_stop(shell: Shell, command: str, url: str, log: Path) -> None:
    """Start a command that serves until stopped, wait until `url` answers, stop it."""
    process = shell.start(command, log)
    try:
        wait_until(lambda: responds(url), command, log, process=process)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


@pytest.mark.dvc
@pytest.mark.slow
def test_every_readme_command_runs_as_written_from_a_spaced_non_ascii_path(workspace, tmp_path):
    shown = [command.split(" #")[0].strip() for command in readme_commands()]
    assert {"make repro", ACTIVATE, "fashion-mlp serve", "make exps", "make ui"} <= set(shown)
    assert any(command.startswith("dvc exp apply lr-005 && ") for command in shown)
    # The README's DVC cache workaround writes under ~/.cache: a home of the test's own.
    # A terminal 120 columns wide, as `dvc exp show` sees one.
    env = new_shell_env() | {"HOME": str(tmp_path / "home"), "COLUMNS": "120"}
    shell = Shell(workspace, env)
    failures, server, serve_log = [], None, tmp_path / "serve.log"
    try:
        for command in shown:
            target = re.fullmatch(r"make ([\w-]+)", command)
            if command == ACTIVATE:
                shell.activated = True
            elif command == "make ui":
                port = free_port()
                ui = f"make ui MLFLOW_PORT={port}"
                reach_and_stop(shell, ui, f"http://127.0.0.1:{port}/health", tmp_path / "ui.log")
            elif command.startswith("fashion-mlp serve"):
                server = shell.start(command, serve_log)  # the README's port: 5001
                wait_until(serving, command, serve_log, process=server)
            elif command == "dvc queue status":  # as a user does: again, until it is done
                wait_until(lambda: queue_done(shell), command, None, seconds=900)
            else:
                dry = target is not None and target[1] in DRY_TARGETS
                done = shell.run(f"make -n {target[1]}" if dry else command)
                if done.returncode != 0:
                    failures.append(f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
                elif command.startswith("curl"):
                    assert '"predictions"' in done.stdout, done.stdout
                elif command == "make exps":  # fits the terminal (COLUMNS), nothing cut short
                    table = done.stdout.splitlines()[1:]
                    assert max(map(len, table)) <= 120 and "…" not in done.stdout, done.stdout
    finally:
        if server is not None:
            server.send_signal(signal.SIGINT)
            assert server.wait(timeout=60) == 0
            assert "stopped" in serve_log.read_text()
    assert failures == []
    assert_each_experiment_changed_only_what_it_says(shell)
    assert_the_promotion_is_what_the_registry_serves(workspace)


def changed_params(experiment: dict, baseline: dict) -> dict[str, tuple]:
    """Leaf param -> (baseline's value, the experiment's), for each leaf that differs."""

    def leaves(prefix: str, value) -> dict:
        if isinstance(value, dict):
            return {
                k: v
                for key, inner in value.items()
                for k, v in leaves(f"{prefix}.{key}" if prefix else key, inner).items()
            }
        return {prefix: value}

    before = leaves("", baseline["data"]["params"]["params.yaml"]["data"])
    after = leaves("", experiment["data"]["params"]["params.yaml"]["data"])
    return {
        k: (before.get(k), after.get(k))
        for k in before.keys() | after.keys()
        if before.get(k) != after.get(k)
    }


def assert_each_experiment_changed_only_what_it_says(shell: Shell) -> None:
    """Run one after the other, each from the committed params: none inherits another's."""
    shown = json.loads(shell.run("dvc exp show --json --all-commits").stdout)
    found = {}
    for commit in shown[1:]:
        for entry in commit.get("experiments") or []:
            found[entry["revs"][0]["name"]] = changed_params(entry["revs"][0], commit)
    assert found["lr-005"] == {"train.lr": (0.5, 0.05)}, found
    assert found["mlp2-lr-005"] == {"models.mlp2.lr": (None, 0.05)}, found
    queued = [changes for name, changes in found.items() if name not in ("lr-005", "mlp2-lr-005")]
    assert sorted(queued, key=str) == [{"train.lr": (0.5, 0.2)}, {"train.lr": (0.5, 0.3)}], found


def assert_the_promotion_is_what_the_registry_serves(folder: Path) -> None:
    import mlflow

    champion = json.loads((folder / "reports/champion.json").read_text())
    assert champion["registry"] == "promoted", champion
    client = mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    version = client.get_model_version_by_alias("fashion-mlp", "champion")
    assert client.get_run(version.run_id).data.params["lr"] == "0.05"
    assert version.description.startswith(f"{champion['model']}: test_acc ")
