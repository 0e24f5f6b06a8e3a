"""Atomic file writes: a crash, a full disk or a bad input never leaves a half-written output.

Every output is written to a temporary file beside its target, then renamed onto it, which
POSIX makes atomic on one file system: readers see the old file or the new one, never a torn
one. A stage with several outputs writes all of them first and renames them together at the end
(`atomic_paths`), so a failure on the way replaces none of them.
"""

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fashion_mlp.errors import PipelineError


@contextmanager
def atomic_paths(*targets: Path) -> Iterator[list[Path]]:
    """A temporary path for each target, with the target's own file name, in a hidden folder
    beside it; all moved onto their targets only if the block succeeds. Otherwise they are
    removed and the targets stay as they were.

    The targets are replaced together: each one in place is first set aside, then the new files
    move in; if any move fails, the ones moved are taken back and the old files restored, so a
    stage never leaves a new model beside an old history.
    """
    targets = tuple(Path(target) for target in targets)
    folders, temporaries, created = [], [], []
    succeeded = False
    try:
        for target in targets:
            created += _make_folders(target.parent)
            folder = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
            folder.mkdir()
            folders.append(folder)
            temporaries.append(folder / target.name)
        yield temporaries
        _replace_together(temporaries, targets, folders)
        succeeded = True
    except (OSError, RuntimeError) as err:
        # torch and safetensors report a failed write as RuntimeError.
        folder = targets[0].parent if targets else Path(".")
        if _out_of_space(folder, err):
            raise PipelineError(
                f"{targets[0]}: no space left on the disk holding it; free space and rerun"
            ) from None
        raise
    finally:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
        if not succeeded:  # leave no empty folders behind either
            for folder in reversed(created):
                with contextlib.suppress(OSError):
                    folder.rmdir()


def _replace_together(temporaries: list[Path], targets: tuple[Path, ...], folders: list) -> None:
    """Move each temporary onto its target; all of them, or (restoring the old) none."""
    set_aside: list[tuple[Path, Path]] = []
    moved: list[Path] = []
    try:
        for target, folder in zip(targets, folders, strict=True):
            if target.exists() or target.is_symlink():
                kept = folder / f".{target.name}.old"
                os.replace(target, kept)
                set_aside.append((kept, target))
        for temporary, target in zip(temporaries, targets, strict=True):
            os.replace(temporary, target)
            moved.append(target)
    except OSError:
        for target in moved:
            target.unlink(missing_ok=True)
        for kept, target in set_aside:
            os.replace(kept, target)
        raise


def _make_folders(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; the ones created, outermost first."""
    missing = [path for path in (folder, *folder.parents) if not path.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    return missing[::-1]


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """One temporary path beside `target`, renamed onto it only if the block succeeds."""
    with atomic_paths(target) as (temporary,):
        yield temporary


@contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """A fresh staging folder beside `target`; it replaces `target` (and everything that was in
    it) only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    staging.mkdir()
    retired = target.with_name(f".{target.name}.{uuid.uuid4().hex}.old")
    try:
        yield staging
        if target.exists():
            os.replace(target, retired)
        os.replace(staging, target)
    except OSError as err:
        if _out_of_space(target.parent, err):
            raise PipelineError(
                f"{target}: no space left on the disk holding it; free space and rerun"
            ) from None
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)


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


def write_bytes_atomic(target: Path, content: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(content)


def fill_between_markers(target: Path, start: str, end: str, body: str) -> None:
    """Replace what lies between the `start` and `end` lines of `target` (a generated section of
    a hand-written file, such as the README's results table) with `body`."""
    text = Path(target).read_text(encoding="utf-8")
    if start not in text or end not in text:
        raise PipelineError(f"{target}: no {start} ... {end} markers to fill")
    before, rest = text.split(start, 1)
    after = rest.split(end, 1)[1]
    write_text_atomic(Path(target), f"{before}{start}\n{body.strip()}\n{end}{after}")
