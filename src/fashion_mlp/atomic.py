"""Atomic file writes: a crash, a full disk or a bad input never leaves a half-written output."""

import errno
import os
import shutil
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
    except (OSError, RuntimeError) as err:
        # torch reports a failed write as RuntimeError("... unexpected pos 896 vs 790").
        if _out_of_space(target.parent, err):
            raise PipelineError(
                f"{target}: no space left on the disk holding it; free space and rerun"
            ) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _out_of_space(folder: Path, err: BaseException) -> bool:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        return shutil.disk_usage(folder).free < 64 * 1024
    except OSError:
        return False


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
