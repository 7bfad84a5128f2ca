"""File writes off the training loop, as Lightning's `AsyncCheckpointIO` does: a checkpoint's
bytes go to disk (write, fsync, rename) in one thread while training goes on.

Only system calls belong there, which release the GIL. Python-heavy work in a second thread
(pickling, say) would hold the GIL each time a torch op of the training loop releases it, and the
loop would wait for it to come back (measured: slower steps on two cores)."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from types import TracebackType

log = logging.getLogger(__name__)


class BackgroundWriter:
    """Runs jobs in one thread, in the order submitted. `wait` blocks until all are done and
    raises the first failure in the caller's thread; after a failure, later jobs are dropped.
    Besides the running job, at most `pending` wait: a disk slower than the checkpoint interval
    holds the loop back instead of filling memory with checkpoints.
    As a context manager, leaving waits for every job, also when an exception is leaving."""

    def __init__(self, pending: int = 1) -> None:
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="genlab-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                if self._error is None:
                    job()
            except BaseException as e:  # noqa: BLE001 - handed to the training thread
                self._error = e
            finally:
                self._jobs.task_done()

    def submit(self, job: Callable[[], None]) -> None:
        """Queue `job` (it must not touch anything training changes later); first raise the
        failure of an earlier job, if any."""
        self._raise()
        self._jobs.put(job)

    def wait(self) -> None:
        """Block until every submitted job is done; raise the first failure."""
        self._jobs.join()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._jobs.join()
        self._jobs.put(None)
        self._thread.join()
        if kind is None:
            self._raise()
        elif self._error is not None:  # the exception already leaving wins; this one is logged
            log.error("a background write failed too: %r", self._error)
