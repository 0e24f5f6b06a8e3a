"""Which project modules can change a pipeline stage's outputs, derived from the code itself.

A stage runs `fashion-mlp COMMAND`: the CLI module's top-level imports, the imports inside the
command's function (and inside the CLI helpers it calls), then everything those modules import,
anywhere in their source (a function-level import is still code the stage may run), to the end:
the import closure. Less the layers declared apart (DECLARED_APART), which decide how a run is
recorded or whether params are accepted, never the bytes a stage writes: their modules, and
whatever only they import, are no stage's code deps (README "Changing code"), the way
RECORDING_KEYS are no stage's params. tests/test_dvc_yaml.py compares what is left with each
stage's code deps in dvc.yaml.
"""

import ast
from pathlib import Path

PACKAGE = "fashion_mlp"
# The recording layer (MLflow: what a run records, never an output's bytes) and the vocabulary
# of registry names (whether params are accepted; the registries' code is a dep where it runs).
DECLARED_APART = (f"{PACKAGE}.tracking", f"{PACKAGE}.choices")
# What counts as a stage's code in dvc.yaml's deps: Python modules and the C extension's source.
CODE_SUFFIXES = (".py", ".c")


def _imported(nodes: list[ast.AST]) -> set[str]:
    """Project module names imported by these nodes (`from fashion_mlp import x` included)."""
    found = set()
    for node in nodes:
        for child in ast.walk(node):
            if isinstance(child, ast.Import):
                found |= {alias.name for alias in child.names if alias.name.startswith(PACKAGE)}
            elif isinstance(child, ast.ImportFrom) and (child.module or "").startswith(PACKAGE):
                if child.module == PACKAGE:
                    found |= {f"{PACKAGE}.{alias.name}" for alias in child.names}
                else:
                    found.add(child.module)
    return found


def module_file(source_root: Path, module: str) -> Path:
    """The module's source: its `.py` file, its package's `__init__.py`, or, for an extension
    module built from C (`_sequential_gemm`), its `.c` file."""
    path = source_root / module.replace(".", "/")
    if path.is_dir():
        return path / "__init__.py"
    python = path.with_suffix(".py")
    return (
        python if python.exists() or not path.with_suffix(".c").exists() else path.with_suffix(".c")
    )


def _imports_of(source_root: Path, module: str) -> set[str]:
    """The project modules a module imports; a C extension imports none."""
    path = module_file(source_root, module)
    return set() if path.suffix == ".c" else _imported([ast.parse(path.read_text())])


def _with_packages(modules: set[str], source_root: Path) -> set[str]:
    """Importing `a.b.c` runs the `__init__.py` of the packages `a.b` on the way (if any)."""
    found = set(modules)
    for module in modules:
        parts = module.split(".")
        for depth in range(2, len(parts)):
            package = ".".join(parts[:depth])
            if (source_root / package.replace(".", "/") / "__init__.py").exists():
                found.add(package)
    return found


def declared_apart(module: str) -> bool:
    return any(module == layer or module.startswith(layer + ".") for layer in DECLARED_APART)


def command_closure(source_root: Path, command: str) -> set[Path]:
    """Files of every project module that can change what `fashion-mlp COMMAND` writes: the
    import closure from cli.py, not entering the layers declared apart."""
    cli_file = module_file(source_root, f"{PACKAGE}.cli")
    tree = ast.parse(cli_file.read_text())
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    top_level = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    # The command's function and the module-level functions it calls, transitively.
    reached, todo = set(), [command.replace("-", "_")]
    while todo:
        name = todo.pop()
        if name in reached or name not in functions:
            continue
        reached.add(name)
        todo += [
            call.func.id
            for call in ast.walk(functions[name])
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
        ]
    if command.replace("-", "_") not in reached:
        raise ValueError(f"cli.py has no command {command!r}")
    modules = _imported(top_level + [functions[name] for name in reached])
    closure = {f"{PACKAGE}.cli"}
    while modules:
        module = modules.pop()
        if module in closure or declared_apart(module):
            continue
        closure.add(module)
        modules |= _with_packages(_imports_of(source_root, module), source_root)
    return {module_file(source_root, module) for module in _with_packages(closure, source_root)}
