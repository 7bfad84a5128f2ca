"""User-facing errors: Hydra prints these as one message, without a traceback.

`HYDRA_FULL_ERROR=1` still shows the full stack trace.
"""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from hydra.errors import CompactHydraException

F = TypeVar("F", bound=Callable[..., Any])


def require_at_least(least: float, **values: float | None) -> None:
    """Refuse the first of `values` below `least`: "NAME must be >= LEAST, got VALUE" (None is
    unset, so allowed)."""
    for name, value in values.items():
        if value is not None and value < least:
            raise ValueError(f"{name} must be >= {least}, got {value}")


class GenlabError(CompactHydraException):
    """A mistake the user can fix; the message says what and how."""


class ConfigError(GenlabError):
    """A config value, type, key or combination that genlab cannot run."""


class DataUnavailableError(GenlabError):
    """A data set that is neither on disk nor downloadable."""


class TrialPruned(Exception):  # noqa: N818 (Optuna's name)
    """A search's pruner stopped the run after an evaluation (`genlab.search`): its run.json
    says `pruned`."""


class WriteError(GenlabError):
    """A file that could not be written: a full disk, a read-only folder, a name too long."""


_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENAMETOOLONG: "the name is too long",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
}


def _reason(error: OSError) -> str:
    return _REASONS.get(error.errno or 0, error.strerror or str(error))


def cannot_write(path: str | Path | None, error: OSError) -> WriteError:
    """The one-line error for `error` while writing `path`."""
    where = error.filename if path is None and error.filename else path
    return WriteError(f"cannot write {where or 'a file'}: {_reason(error)}")


@contextmanager
def writing(path: str | Path | None) -> Iterator[None]:
    """Turn an `OSError` raised while writing `path` into a `WriteError` naming it."""
    try:
        yield
    except OSError as e:
        raise cannot_write(path, e) from e


def one_message(command: F) -> F:
    """A command whose `OSError`s (a file it could not read or write) end as one message."""

    @functools.wraps(command)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except OSError as e:
            raise GenlabError(f"{e.filename}: {_reason(e)}" if e.filename else _reason(e)) from e

    return wrapped  # type: ignore[return-value]
