"""The background call queue: a run's calls reach the store one at a time, in order, on one
thread, while training goes on."""

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from fashion_mlp.tracking.store import Store, translated_call


class CallQueue:
    """Calls run one at a time, in order, on one background thread. The first failure is
    raised in the caller at its next `submit` or at `wait`; every call after it is skipped (a
    store that failed once would make each of them wait out its retries too)."""

    def __init__(self, store: Store):
        self.store = store
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="mlflow")
        self._pending: list[Future] = []
        self._failure: BaseException | None = None
        self.failed = False

    def submit(self, function: Callable[..., Any], *args: Any) -> None:
        self._raise_failure()
        self._pending.append(self._pool.submit(self._guarded, function, *args))

    def _guarded(self, function: Callable[..., Any], *args: Any) -> None:
        if self.failed:
            return
        try:
            translated_call(self.store, function, *args)
        except BaseException as err:
            self._failure, self.failed = err, True

    def wait(self) -> None:
        for future in self._pending:
            future.result()
        self._pending.clear()
        self._raise_failure()

    def _raise_failure(self) -> None:
        self._pending = [future for future in self._pending if not future.done()]
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure

    def close(self) -> None:
        self._pool.shutdown(wait=True)
