"""How many threads a training uses: a fair share of the cores among the running trainings.

Two torch processes that each start one thread per core thrash on a small machine (measured on
2 cores: two trainings at once took 1.9x as long as one after the other; OpenMP threads spin
waiting for cores that the other process holds). numerics.py makes the weights independent of
the thread count, so the count is a speed setting only: it needs no params key, and DVC's
run-cache rightly ignores it. The policy:

1. **Trainings share the cores fairly.** Each training registers in a folder shared by all of
   the user's trainings on this machine, whatever project they belong to (`CoreShare`: one
   file per training, held under an exclusive `flock`, so a killed process's entry vanishes
   with it) and uses `threads_for(cores, trainings)` threads, rechecked twice a second, so
   trainings that start or finish rebalance the others at once.
2. **Granted CPUs win.** `FASHION_MLP_THREADS=N` fixes N threads; a Ray trial uses the CPUs
   Ray granted it (`sweep.cpus_per_trial`).

The folder is `$XDG_RUNTIME_DIR/fashion-mlp/trainings` (private to the user by construction),
else `$TMPDIR/fashion-mlp-UID/trainings`, or `FASHION_MLP_CORE_REGISTRY`. It must belong to the
user and be writable by nobody else: another user who could write there could freeze every
training (a FIFO among the entries) or steal its cores. Entries that are not plain files are
skipped, never opened for reading.
"""

import fcntl
import os
import stat
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType

from fashion_mlp.errors import PipelineError

RECHECK_SECONDS = 0.5
REGISTRY_VARIABLE = "FASHION_MLP_CORE_REGISTRY"


def default_registry() -> Path:
    """One folder per user and machine: every training of that user registers here."""
    if os.environ.get(REGISTRY_VARIABLE):
        return Path(os.environ[REGISTRY_VARIABLE])
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "fashion-mlp" / "trainings"
    return Path(tempfile.gettempdir()) / f"fashion-mlp-{os.getuid()}" / "trainings"


def private_folder(folder: Path) -> Path:
    """Create `folder` (and a missing parent) for this user only, or check that it is: owned by
    this user, writable by nobody else. PipelineError naming it otherwise."""
    for path in (folder.parent, folder):
        try:
            path.mkdir(mode=0o700, exist_ok=True)
        except FileNotFoundError:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.lstat()
        if (
            not stat.S_ISDIR(info.st_mode)
            or info.st_uid != os.getuid()
            or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        ):
            raise PipelineError(
                f"{path}: the training core registry must be a folder of yours that nobody else "
                f"can write (owner uid {info.st_uid}, mode {stat.filemode(info.st_mode)}); "
                f"remove it, or set {REGISTRY_VARIABLE} to a private folder"
            )
    return folder


def available_cores() -> int:
    """Cores this process may run on (respects taskset, cpusets and container limits)."""
    return len(os.sched_getaffinity(0))


def threads_for(cores: int, trainings: int) -> int:
    """A fair share of `cores` among `trainings` running trainings, at least one thread each.

    Beyond one training per core each gets one thread: single-threaded processes time-share a
    core without the spinning that makes multi-threaded ones thrash.
    """
    return max(1, cores // max(1, trainings))


class CoreShare:
    """This process's registration as a running training, and the threads it may use.

    `rebalance()` (called after every batch; cheap, it rechecks at most twice a second) sets
    torch's thread count to the current fair share and remembers every count it used. With
    `fixed_threads` the registry is not used at all.
    """

    def __init__(self, registry: Path | None = None, fixed_threads: int | None = None):
        self.registry = Path(registry) if registry else default_registry()
        self.fixed_threads = fixed_threads
        self.used: list[int] = []
        self._entry: Path | None = None
        self._handle: int | None = None
        self._next_check = 0.0

    def __enter__(self) -> "CoreShare":
        if self.fixed_threads is None:
            self._register()
        self.rebalance(force=True)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._entry is not None:
            self._entry.unlink(missing_ok=True)
        if self._handle is not None:
            os.close(self._handle)  # releases the lock

    def _register(self) -> None:
        private_folder(self.registry)
        # Lock under a hidden name first, then rename: others never see an unlocked entry.
        pending = self.registry / f".{os.getpid()}-{uuid.uuid4().hex}"
        self._handle = os.open(pending, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._handle, fcntl.LOCK_EX)
        self._entry = pending.with_name(pending.name.lstrip(".") + ".training")
        pending.rename(self._entry)

    def live_trainings(self) -> int:
        """Registered trainings whose process still holds its lock (stale entries removed)."""
        live = 0
        for entry in self.registry.glob("*.training"):
            try:
                # O_NONBLOCK: a FIFO planted here must not block us on open.
                handle = os.open(entry, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
            except (FileNotFoundError, OSError):
                continue  # finished while we looked, or not a file of ours
            try:
                if not stat.S_ISREG(os.fstat(handle).st_mode):
                    continue
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                live += 1
            else:
                entry.unlink(missing_ok=True)  # its process died without cleaning up
            finally:
                os.close(handle)
        return live

    def rebalance(self, force: bool = False) -> int:
        """Apply the current share to torch; returns the thread count in use."""
        import torch

        now = time.monotonic()
        if not force and now < self._next_check:
            return self.used[-1]
        self._next_check = now + RECHECK_SECONDS
        threads = self.fixed_threads or threads_for(available_cores(), self.live_trainings())
        if not self.used or threads != self.used[-1]:
            torch.set_num_threads(threads)
            self.used.append(threads)
        return threads

    def describe(self) -> str:
        """The thread counts used, in order, e.g. '2' or '2,1,2' (for the run's tags)."""
        return ",".join(map(str, self.used))
