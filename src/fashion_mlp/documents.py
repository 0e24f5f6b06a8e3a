"""Reading the YAML and JSON documents the pipeline takes in: one library per format, and the
same refusals everywhere, each one line naming the file.

YAML is parsed the way DVC parses it (ruamel.yaml, YAML 1.2), so both read the same values:
PyYAML's YAML 1.1 would read `epochs: 010` as 8 and `flip: yes` as true where DVC records 10 and
"yes". JSON is Python's own.

Refused in both: a key written twice in one mapping (a parser would keep the last value
silently: `lr: 0.1` ... `lr: 5.0` trains at 5.0), a file larger than the caller allows, text that
is not UTF-8, and, for YAML, anchors and aliases that expand to more than MAX_VALUES values
(a few lines can stand for billions) or a mapping key that is not a plain name.
"""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fashion_mlp.errors import PipelineError

MAX_VALUES = 100_000
# How much of an offending value an error line shows.
SHOWN_CHARACTERS = 80


def shown(value: Any) -> str:
    """repr(value), cut to SHOWN_CHARACTERS: an error line stays one short line."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARACTERS else text[: SHOWN_CHARACTERS - 3] + "..."


def read_text(path: Path, max_bytes: int, what: str) -> str:
    """The UTF-8 text of `path`, a `what` (e.g. "params file") of at most `max_bytes`."""
    path = Path(path)
    try:
        with path.open("rb") as stream:
            content = stream.read(max_bytes + 1)
    except FileNotFoundError:
        raise PipelineError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise PipelineError(f"{path}: is a folder; pass the {what} itself") from None
    if len(content) > max_bytes:
        raise PipelineError(f"{path}: larger than {max_bytes:,} bytes; not a {what}")
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PipelineError(
            f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); save it as UTF-8"
        ) from None


def parse_yaml(text: str, source: Path) -> Any:
    """The values of a YAML 1.2 document (DVC's parser), or a PipelineError naming `source`."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    yaml = YAML(typ="safe", pure=True)
    try:
        _refuse_duplicate_keys(yaml.compose(text), source)
        values = yaml.load(text)
    except MarkedYAMLError as err:
        problem = " ".join(str(err.problem or err.context or "").split())[:200]
        mark = err.problem_mark or err.context_mark
        where = f" at line {mark.line + 1}" if mark else ""
        raise PipelineError(f"{source}: not valid YAML ({problem}{where})") from None
    except (YAMLError, TypeError, ValueError, RecursionError) as err:
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise PipelineError(f"{source}: not valid YAML ({reason})") from None
    _refuse_explosion(values, source)
    return values


def read_yaml(path: Path, max_bytes: int, what: str) -> Any:
    return parse_yaml(read_text(path, max_bytes, what), Path(path))


def parse_json(text: str | bytes, source: Path | str) -> Any:
    """The values of a JSON document, or a PipelineError naming `source`."""
    try:
        return json.loads(text, object_pairs_hook=unique_pairs)
    except DuplicateKey as duplicate:
        raise PipelineError(f"{source}: {duplicate}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise PipelineError(f"{source}: not valid JSON ({reason})") from None


def read_json(path: Path, max_bytes: int, what: str) -> Any:
    return parse_json(read_text(path, max_bytes, what), Path(path))


class DuplicateKey(ValueError):
    """A JSON object with a key written twice (from `unique_pairs`)."""

    def __init__(self, key: str):
        super().__init__(f"key {shown(key)} appears twice in one object; keep one")
        self.key = key


def unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`object_pairs_hook` for json.loads that refuses a key written twice (DuplicateKey)."""
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise DuplicateKey(key)
        found[key] = value
    return found


def _mappings(node: Any) -> Iterator[Any]:
    """Every mapping node under `node`, each once (an alias repeats a node, not its work)."""
    seen, todo = set(), [node]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen or len(seen) > MAX_VALUES:
            continue
        seen.add(id(current))
        if current.id == "mapping":
            yield current
            todo.extend(item for pair in current.value for item in pair)
        elif current.id == "sequence":
            todo.extend(current.value)


def _refuse_duplicate_keys(node: Any, source: Path) -> None:
    for mapping in _mappings(node):
        first_line: dict[Any, int] = {}
        for key, _ in mapping.value:
            name = key.value if key.id == "scalar" else None
            line = key.start_mark.line + 1
            if name is not None and name in first_line:
                raise PipelineError(
                    f"{source}: not valid YAML (key {shown(name)} appears twice (lines "
                    f"{first_line[name]} and {line}); keep one)"
                )
            if name is not None:
                first_line[name] = line


def _refuse_explosion(values: Any, source: Path) -> None:
    """Count the values the parsed document expands to, stopping at MAX_VALUES: YAML aliases
    share one object, so a few lines of anchors can stand for billions of values."""
    count, todo = 0, [values]
    while todo:
        value = todo.pop()
        count += 1
        if count > MAX_VALUES:
            raise PipelineError(
                f"{source}: expands to more than {MAX_VALUES:,} values (YAML anchors and "
                "aliases?); write the settings out"
            )
        if isinstance(value, dict):
            for key in value:
                if not isinstance(key, str | int | float | bool) or key is None:
                    raise PipelineError(
                        f"{source}: a mapping key is {shown(key)}; keys must be plain names"
                    )
            todo.extend(value.values())
        elif isinstance(value, list):
            todo.extend(value)


def yaml_text(values: Any) -> str:
    """`values` as block-style YAML 1.2, keys in their order, that DVC and `parse_yaml` read
    back unchanged."""
    import io

    from ruamel.yaml import YAML

    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.representer.sort_base_mapping_type_on_output = False  # keys in the order given
    stream = io.StringIO()
    yaml.dump(values, stream)
    return stream.getvalue()
