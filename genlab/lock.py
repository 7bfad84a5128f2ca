"""OS locks on files, which the OS drops when the process ends (a killed process leaves no stale
lock). A run folder's is `RUN/.lock`, held by the run that writes the folder
(`run_folder.RunFolder`) and asked by whoever needs to know whether a run is still alive
(`record.read_records`); a search's study holds its own (`genlab.search`)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from genlab.errors import GenlabError
from genlab.files import refused

try:
    import fcntl
except ImportError:  # Windows: runs are not locked
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LOCK = ".lock"


def _open(path: Path) -> int:
    """The lock file `path`, made if missing, never through a link."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        raise refused(path, e, "lock") from None


def _claim(fd: int) -> None:
    """Write this process's pid in the lock file it now holds."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def release(fd: int) -> None:
    """Empty the lock file (the pid is the holder's only while it holds) and let the lock go."""
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
    os.close(fd)


def hold(folder: Path) -> int | None:
    """Hold `folder`'s lock (the OS drops it with the process); refuse if another run holds it."""
    fd = _open(folder / LOCK)
    if fcntl is None:
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise GenlabError(
            f"run folder {folder} is in use by another genlab run (pid {pid}): wait for it to "
            "end, or choose another folder with hydra.run.dir=..."
        ) from None
    except OSError as e:  # a file system without locks
        log.warning("cannot lock %s (%s): a second run could write into it", folder, e)
    _claim(fd)
    return fd


@contextlib.contextmanager
def held(path: Path) -> Iterator[None]:
    """Hold the lock on file `path` (made if missing) while the block runs, waiting for another
    process to release it; the holder's pid is written in it."""
    fd = _open(path)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        _claim(fd)
        yield
    finally:
        release(fd)


def lock_holder(folder: str | Path) -> int | None:
    """The pid of the process that holds `folder`'s lock (-1 if it wrote none), or None when no
    process does."""
    return holder(Path(folder) / LOCK)


def holder(path: Path) -> int | None:
    """The pid of the process that holds the lock on file `path` (-1 if it wrote none), or
    None when no process does (or there is no such file)."""
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return int(text) if text.isdigit() else -1
    except OSError:
        return None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
