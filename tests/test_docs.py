"""The docs point at things that exist: every test they cite, every README section that
params.yaml, the code and the docs refer to."""

import ast
import re
from pathlib import Path

from helpers.data import PROJECT_ROOT

DOCS = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
# `test_x.py::test_name`, `tests/test_x.py::test_name[case]`, or `::test_name` (same file as
# the reference before it).
CITED_TEST = re.compile(r"(?:(?:tests/)?(test_\w+\.py))?::(test_\w+)")


def defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}


def test_every_test_the_docs_cite_exists():
    missing = []
    for doc in DOCS:
        current = None
        for match in CITED_TEST.finditer(doc.read_text(encoding="utf-8")):
            current = match.group(1) or current
            assert current, f"{doc.name}: {match.group(0)} names no test file before it"
            if match.group(2) not in defined_tests(PROJECT_ROOT / "tests" / current):
                missing.append(f"{doc.name}: {current}::{match.group(2)}")
    assert missing == []


def readme_sections() -> set[str]:
    text = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    return set(re.findall(r"^#+ (.+?)\s*$", text, flags=re.M))


def test_every_readme_section_referred_to_exists():
    sources = [PROJECT_ROOT / "params.yaml", *DOCS, *(PROJECT_ROOT / "src").rglob("*.py")]
    cited = {
        (source.name, section)
        for source in sources
        for section in re.findall(r'README "([^"]+)"', source.read_text(encoding="utf-8"))
    }
    sections = readme_sections()
    assert {(name, section) for name, section in cited if section not in sections} == set()
