"""How many threads a training uses, and numerics that give the same weights whatever that is.

Two torch processes that each start one thread per core thrash on a small machine (measured on
2 cores: two trainings at once took 1.9x as long as one after the other; OpenMP threads spin
waiting for cores that the other process holds). The policy:

1. **Numerics do not depend on the thread count** (`numerics.py`). Intel MKL's strict
   conditional numerical reproducibility (`MKL_CBWR=AUTO,STRICT`) makes its matrix products
   bit-identical for any number of threads, on a given instruction set. With it, the
   same params give the same weights run alone, in a `dvc queue start -j N` queue or as a Ray
   trial (tests/test_threads.py trains with 1 and 2 threads and compares the weights bit for
   bit). The thread count is then a speed setting only, so it needs no params key and DVC's
   run-cache rightly ignores it.
2. **Trainings share the cores fairly.** Each training registers in a machine-wide folder
   (`CoreShare`: one file per training, held under an exclusive `flock`, so a killed process's
   entry vanishes with it) and uses `threads_for(cores, trainings)` threads, rechecked twice a
   second, so trainings that start or finish rebalance the others at once.
3. **Granted CPUs win.** `FASHION_MLP_THREADS=N` fixes N threads; a Ray trial uses the CPUs
   Ray granted it (`sweep.cpus_per_trial`).
"""

import fcntl
import os
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType

RECHECK_SECONDS = 0.5


def default_registry() -> Path:
    """One folder per user and machine: every training of that user registers here."""
    return Path(tempfile.gettempdir()) / f"fashion-mlp-{os.getuid()}" / "trainings"


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
        self.registry.mkdir(parents=True, exist_ok=True)
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
                handle = os.open(entry, os.O_RDONLY)
            except FileNotFoundError:
                continue  # finished while we looked
            try:
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
