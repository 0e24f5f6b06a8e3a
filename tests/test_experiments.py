"""`make exps` (`fashion-mlp exps`): DVC experiments in a table that fits 120 columns, showing
what each experiment changed and the test accuracy of every model it retrained."""

import json
import subprocess

import pytest

from helpers.data import tiny_params, write_synthetic_raw
from helpers.process import CLI, run, stage_env
from helpers.projects import make_project

# Each experiment changes one param of its own: (name, -S argument, the line `exps` shows for
# it, the models it retrains).
EXPERIMENTS = [
    ("all-lr-03", "train.lr=0.3", "train.lr: 0.5 -> 0.3", {"mlp1", "mlp2"}),
    ("mlp1-wider", "models.mlp1.hidden=[64]", "models.mlp1.hidden: [32] -> [64]", {"mlp1"}),
    (
        "mlp2-momentum",
        "++models.mlp2.momentum=0.5",
        "models.mlp2.momentum: (none) -> 0.5",
        {"mlp2"},
    ),
]


@pytest.fixture(scope="module")
def experimented(tmp_path_factory):
    """A committed project (1 epoch per model), three finished experiments run from it with
    `--temp`, and one queued and never started."""
    folder = tmp_path_factory.mktemp("exps")
    checksums = write_synthetic_raw(folder / "source")
    params = tiny_params(folder / "source", checksums, "sqlite:///mlflow.db")
    params["train"]["epochs"] = 1
    project = make_project(folder / "project", params)
    run(["dvc", "repro", "--quiet"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", "baseline"], project)
    for name, setting, _, _ in EXPERIMENTS:
        run(["dvc", "exp", "run", "--temp", "--quiet", "-n", name, "-S", setting], project)
    run(["dvc", "exp", "run", "--queue", "-n", "waiting", "-S", "train.lr=0.2"], project)
    return project


def exps(project, *options: str, **env: str) -> list[str]:
    done = subprocess.run(
        [CLI, "exps", *options],
        cwd=project,
        env=stage_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def rows_of(lines: list[str], name: str) -> list[str]:
    """The lines of one experiment: its first row and the continuation rows under it."""
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{name} "))
    rows = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith(" "):
            break
        rows.append(line)
    return rows


@pytest.mark.dvc
def test_exps_fits_120_columns_and_shows_each_change_and_each_retrained_models_accuracy(
    experimented,
):
    shown = json.loads(run(["dvc", "exp", "show", "--json"], experimented))
    baseline = shown[1]["name"]  # the branch
    measured = {
        revision["name"]: {
            path.split("/")[-1].removesuffix(".json"): content["data"]["test_acc"]
            for path, content in revision["data"]["metrics"].items()
        }
        for entry in shown[1]["experiments"]
        for revision in entry["revs"][:1]
        if revision["data"].get("metrics")
    }
    for environment in ({"COLUMNS": "120"}, {}):  # a terminal of 120 columns; no terminal
        lines = exps(experimented, **environment)
        assert lines[0].split() == ["experiment", "changed", "model", "test_acc", "vs", baseline]
        assert max(map(len, lines)) <= 120 and "…" not in "\n".join(lines), "\n".join(lines)
        for name, _, change, retrained in EXPERIMENTS:
            rows = rows_of(lines, name)
            assert change in rows[0], rows
            models = {row.split()[-3]: float(row.split()[-2]) for row in rows}
            assert set(models) == retrained, rows
            for model in retrained:
                assert models[model] == pytest.approx(measured[name][model], abs=5e-5), rows
        (waiting,) = rows_of(lines, "waiting")
        assert "train.lr: 0.5 -> 0.2" in waiting and waiting.split()[-1] == "queued"


@pytest.mark.dvc
def test_exps_in_a_narrow_terminal_wraps_a_change_instead_of_cutting_it(experimented):
    lines = exps(experimented, "--width", "60")
    assert max(map(len, lines)) <= 60, "\n".join(lines)
    rows = rows_of(lines, "mlp2-momentum")
    start, end = lines[0].index("changed"), lines[0].index("model")
    cell = "".join(row[start:end] for row in rows).replace(" ", "")
    assert cell == "models.mlp2.momentum:(none)->0.5", rows
