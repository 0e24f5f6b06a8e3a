"""Atomic file writes: a crash or a bad input never leaves a half-written output behind."""

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fashion_mlp.errors import PipelineError


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only if the block succeeds.

    The temporary file lives in the same folder so the final `os.replace` is a same-filesystem
    rename, which POSIX makes atomic: readers see the old file or the new one, never a torn one.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # A fresh unique name the writer creates itself, so the file gets the usual permissions.
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(target: Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def fill_between_markers(target: Path, start: str, end: str, body: str) -> None:
    """Replace what lies between the `start` and `end` lines of `target` (a generated section of
    a hand-written file, such as the README's results table) with `body`."""
    text = Path(target).read_text(encoding="utf-8")
    if start not in text or end not in text:
        raise PipelineError(f"{target}: no {start} ... {end} markers to fill")
    before, rest = text.split(start, 1)
    after = rest.split(end, 1)[1]
    write_text_atomic(Path(target), f"{before}{start}\n{body.strip()}\n{end}{after}")
