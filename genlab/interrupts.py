"""Ctrl-C and SIGTERM (a cluster's pre-emption) during training: the loop saves a checkpoint at
the current step and exits (`StoppedAtSignal`, status 128 + signal); a second signal stops at
once, and so does the first during an evaluation (`EvaluationInterrupted`)."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)


class StoppedAtSignal(SystemExit):
    """The run stopped at a signal after saving a checkpoint; the exit status is 128 + signal."""

    def __init__(self, signum: int, reason: str) -> None:
        super().__init__(128 + signum)
        self.reason = reason


class EvaluationInterrupted(BaseException):
    """A signal arrived during an evaluation, which stops at once (a BaseException, as
    KeyboardInterrupt is, so that no `except Exception` on the way swallows it)."""


# Signals that arrived before the training loop caught them itself (`before_the_loop`)
_EARLY: list[int] = []


def before_the_loop(signum: int, frame: Any) -> None:
    """SIGTERM outside the training loop ends a command as Ctrl-C does (KeyboardInterrupt: its
    run records it), instead of killing it. The signal is also kept: where Python code swallows
    the exception (an exception raised in a `__del__` or a dict lookup's `__eq__` is lost), a
    training loop entered after all stops at its first step."""
    _EARLY.append(signum)
    raise KeyboardInterrupt(signal.Signals(signum).name)


class CaughtSignals(list):
    """While entered, SIGINT and SIGTERM are caught: the signals received, which the loop acts
    on. A second one raises KeyboardInterrupt; the first raises EvaluationInterrupted inside
    `interruptible()`."""

    def __init__(self) -> None:
        super().__init__()
        self._previous: dict[int, Any] = {}
        self._interruptible = False

    def _handler(self, signum: int, frame: Any) -> None:
        if self:
            raise KeyboardInterrupt
        self.append(signum)
        name = signal.Signals(signum).name
        if self._interruptible:
            raise EvaluationInterrupted(name)
        log.warning("%s received: saving a checkpoint after this step", name)

    @property
    def signal(self) -> signal.Signals:
        """The first signal (SIGTERM if another process of the run received it)."""
        return signal.Signals(self[0] if self else signal.SIGTERM)

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False

    def __enter__(self) -> CaughtSignals:
        if _EARLY:  # received before the loop, and its KeyboardInterrupt lost on the way
            self.append(_EARLY[0])
            log.warning("%s received: saving a checkpoint after this step", self.signal.name)
            _EARLY.clear()
        if threading.current_thread() is threading.main_thread():
            self._previous = {
                s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)
            }
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
