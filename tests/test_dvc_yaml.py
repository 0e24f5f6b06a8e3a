"""dvc.yaml tells the truth: each stage's code deps are exactly the modules it runs.

The closure is derived from the code (tests/helpers/imports.py): the CLI command's imports and
everything they import, transitively. A new import that dvc.yaml does not list would let DVC
skip a stage whose code changed; a listed module the stage no longer runs would rerun it for
nothing. Both directions fail here. (Params are checked by running each stage with only its
declared params: see `declared_params` and the stage tests.)
"""

import re
from pathlib import Path

import pytest
import yaml

from helpers.data import PROJECT_ROOT, dvc_stages
from helpers.imports import CODE_SUFFIXES, command_closure

SOURCE = PROJECT_ROOT / "src"
PIPELINES = [PROJECT_ROOT / "dvc.yaml", PROJECT_ROOT / "sweeps/dvc.yaml"]


def stages() -> list[tuple[Path, str, dict]]:
    found = []
    for pipeline in PIPELINES:
        for name, stage in yaml.safe_load(pipeline.read_text())["stages"].items():
            found.append((pipeline, name, stage.get("do", stage)))
    return found


@pytest.mark.parametrize(
    ("pipeline", "name", "stage"), stages(), ids=[name for _, name, _ in stages()]
)
def test_code_deps_are_exactly_the_modules_the_stage_runs(pipeline, name, stage):
    command = re.match(r"fashion-mlp (\S+)", stage["cmd"]).group(1)
    wdir = (pipeline.parent / stage.get("wdir", ".")).resolve()
    declared = {
        (wdir / dep).resolve() for dep in stage.get("deps", []) if dep.endswith(CODE_SUFFIXES)
    }
    runs = {path.resolve() for path in command_closure(SOURCE, command)}
    assert sorted(map(str, declared - runs)) == [], "listed but not run"
    assert sorted(map(str, runs - declared)) == [], "run but not listed"


def test_every_stage_calls_the_cli():
    for _, name, stage in stages():
        assert stage["cmd"].startswith("fashion-mlp "), name
    assert set(dvc_stages()) >= {"download", "preprocess", "train", "evaluate", "compare"}
