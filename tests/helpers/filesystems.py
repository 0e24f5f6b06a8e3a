"""Small real file systems for fault tests: a tmpfs that fills up, or turns read-only."""

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from helpers.markers import require


@contextmanager
def small_tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (e.g. "256k") mounted on `folder` (needs root, as CI runs)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    require(mounted.returncode == 0, f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder: Path) -> None:
    """Write zeros into `folder` until its file system has no space left."""
    try:
        with (folder / "filler").open("wb", buffering=0) as stream:
            while True:
                stream.write(b"\0" * 4096)
    except OSError as err:
        assert err.errno == 28, err  # ENOSPC: full, as wanted


def make_read_only(folder: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
