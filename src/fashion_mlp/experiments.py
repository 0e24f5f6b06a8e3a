"""Command `exps` (`make exps`): the DVC experiments as a table that fits the terminal.

`dvc exp show` puts every param and every metric in one row per experiment: with six models
that needs about 270 columns, and a terminal of 120 cuts off what each experiment changed. Here
each experiment takes one row per model it retrained (its `configs/MODEL.json` differs from its
baseline's), beside the params it changed, wrapped to fit:

    experiment  changed                       model  test_acc  vs main
    main        (baseline)                    mlp1   0.8492
                                              mlp2   0.8363
    lr-005      train.lr: 0.1 -> 0.05         mlp1   0.8391    -0.0101
                                              mlp2   0.8301    -0.0062

The width is the terminal's (or COLUMNS), 120 without either. Queued, running and failed
experiments say so in place of a test accuracy. Reads `dvc exp show --json` only.
"""

import json
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fashion_mlp.errors import PipelineError
from fashion_mlp.layout import CONFIGS_DIR, METRICS_DIR, PARAMS_FILE

METRIC = "test_acc"
FALLBACK_WIDTH = 120
GAP = "  "


@dataclass(frozen=True)
class Experiment:
    name: str
    changed: list[str]  # "key: before -> after", one per changed leaf param
    accuracy: dict[str, float | None]  # each retrained model's test_acc (None: not measured)
    state: str | None  # "queued", "running", "failed"; None once it finished


def show_experiments(root: Path) -> list[dict[str, Any]]:
    """`dvc exp show --json` in the project at `root`."""
    dvc = Path(sys.executable).parent / "dvc"
    done = subprocess.run(
        [str(dvc), "exp", "show", "--json"], cwd=root, capture_output=True, text=True
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise PipelineError(f"dvc exp show failed: {last}")
    return json.loads(done.stdout)


def experiments(shown: list[dict[str, Any]]) -> tuple[str, dict[str, float | None], list]:
    """(baseline name, its test_acc per model, its experiments newest first) from the JSON of
    `dvc exp show`: the workspace counts as an experiment when it differs from its commit."""
    workspace, *commits = shown
    if not commits:
        raise PipelineError("no commit yet: commit the project, then run experiments")
    baseline = commits[0]
    base_data = baseline["data"]
    name = baseline.get("name") or baseline["rev"][:7]
    found = []
    if _leaf_params(workspace["data"]) != _leaf_params(base_data) or _accuracy(
        workspace["data"]
    ) != _accuracy(base_data):
        found.append(_experiment("workspace", workspace["data"], base_data, None))
    for entry in baseline.get("experiments") or []:
        latest = entry["revs"][0]
        state = (entry.get("executor") or {}).get("state")
        if latest.get("error"):
            state = "failed"
        label = entry.get("name") or latest.get("name") or latest["rev"][:7]
        found.append(_experiment(label, latest.get("data") or {}, base_data, state))
    return name, _accuracy(base_data), found


def _experiment(name: str, data: dict, base: dict, state: str | None) -> Experiment:
    before, after = _leaf_params(base), _leaf_params(data)
    changed = [
        f"{key}: {_value(before.get(key))} -> {_value(after.get(key))}"
        for key in sorted(before.keys() | after.keys())
        if before.get(key) != after.get(key)
    ]
    accuracy = _accuracy(data)
    retrained = {
        model: value
        for model, value in accuracy.items()
        if _config_hash(data, model) != _config_hash(base, model)
    }
    return Experiment(name, changed, retrained, None if state in (None, "success") else state)


def _leaf_params(data: dict) -> dict[str, Any]:
    params = (data.get("params") or {}).get(str(PARAMS_FILE), {}).get("data") or {}
    return dict(_flatten("", params))


def _flatten(prefix: str, value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        for key, inner in value.items():
            yield from _flatten(f"{prefix}.{key}" if prefix else str(key), inner)
    else:
        yield prefix, value


def _value(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _accuracy(data: dict) -> dict[str, float | None]:
    """Each model's test_acc, from metrics/MODEL.json."""
    found = {}
    for path, content in (data.get("metrics") or {}).items():
        if Path(path).parent == METRICS_DIR:
            found[Path(path).stem] = ((content or {}).get("data") or {}).get(METRIC)
    return dict(sorted(found.items()))


def _config_hash(data: dict, model: str) -> str | None:
    return ((data.get("deps") or {}).get(f"{CONFIGS_DIR}/{model}.json") or {}).get("hash")


def table(shown: list[dict[str, Any]], width: int | None = None) -> list[str]:
    """The lines `make exps` prints: none longer than `width` (the terminal's by default)."""
    width = width or shutil.get_terminal_size((FALLBACK_WIDTH, 24)).columns
    base_name, base_accuracy, found = experiments(shown)
    rows: list[tuple[str, list[str], dict[str, str], dict[str, str]]] = [
        (base_name, ["(baseline)"], {m: _number(v) for m, v in base_accuracy.items()}, {})
    ]
    for experiment in found:
        if experiment.state:
            scores = {"-": experiment.state}
        elif not experiment.accuracy:
            scores = {"-": "no model retrained"}
        else:
            scores = {m: _number(v) for m, v in experiment.accuracy.items()}
        change = {
            m: _signed(v - base_accuracy[m])
            for m, v in experiment.accuracy.items()
            if not experiment.state and v is not None and base_accuracy.get(m) is not None
        }
        rows.append((experiment.name, experiment.changed or ["(nothing)"], scores, change))

    header = ("experiment", "changed", "model", METRIC, f"vs {base_name}")
    name_width = min(max(len(header[0]), *(len(row[0]) for row in rows)), 24)
    model_width = max(len(header[2]), *(len(m) for row in rows for m in row[2]))
    score_width = max(len(header[3]), *(len(s) for row in rows for s in row[2].values()))
    change_width = max(len(header[4]), 7)
    fixed = name_width + model_width + score_width + change_width + 4 * len(GAP)
    longest = max(len(header[1]), *(len(item) for row in rows for item in row[1]))
    changed_width = min(max(width - fixed, 16), longest)

    def line(*cells: str) -> str:
        name, changed, model, score, change = cells
        return GAP.join(
            [
                name.ljust(name_width),
                changed.ljust(changed_width),
                model.ljust(model_width),
                score.ljust(score_width),
                change,
            ]
        ).rstrip()

    lines = [line(*header)]
    for name, changed, scores, change in rows:
        names = textwrap.wrap(name, name_width, break_on_hyphens=False)
        wrapped = [
            part
            for item in changed
            for part in textwrap.wrap(
                item, changed_width, subsequent_indent="  ", break_on_hyphens=False
            )
        ]
        models = list(scores)
        for index in range(max(len(names), len(wrapped), len(models))):
            model = models[index] if index < len(models) else ""
            lines.append(
                line(
                    names[index] if index < len(names) else "",
                    wrapped[index] if index < len(wrapped) else "",
                    model,
                    scores.get(model, ""),
                    change.get(model, ""),
                )
            )
    return lines


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _signed(value: float) -> str:
    return f"{value:+.4f}"
