"""Rewrite the code deps of every stage in dvc.yaml and sweeps/dvc.yaml from the imports.

Each stage lists, as deps, exactly the project modules its command runs: the CLI's command and
everything it imports, transitively (tests/helpers/imports.py derives it; tests/test_dvc_yaml.py
fails when dvc.yaml and the code disagree). After changing imports:

    python tools/code_deps.py      # rewrites the `src/...py` deps in place, keeps the rest
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from helpers.imports import CODE_SUFFIXES, command_closure  # noqa: E402

PIPELINES = [ROOT / "dvc.yaml", ROOT / "sweeps/dvc.yaml"]


def main() -> None:
    from ruamel.yaml import YAML

    yaml = YAML()  # round trip: comments and layout stay
    yaml.width = 4096  # never fold a line DVC reads (a folded cmd gains a trailing space)
    yaml.indent(mapping=2, sequence=4, offset=2)
    for pipeline in PIPELINES:
        document = yaml.load(pipeline.read_text())
        for stage in document["stages"].values():
            body = stage.get("do", stage)
            command = re.match(r"fashion-mlp (\S+)", str(body["cmd"])).group(1)
            wdir = (pipeline.parent / stage.get("wdir", ".")).resolve()
            modules = sorted(
                path.resolve().relative_to(wdir).as_posix()
                for path in command_closure(ROOT / "src", command)
            )
            deps = body["deps"]
            kept = [dep for dep in deps if not str(dep).endswith(CODE_SUFFIXES)]
            deps.clear()
            deps.extend([*kept, *modules])
        with pipeline.open("w") as stream:
            yaml.dump(document, stream)
        print(f"{pipeline.relative_to(ROOT)}: code deps rewritten")


if __name__ == "__main__":
    main()
