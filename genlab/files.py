"""How genlab writes files: whole, never through a link, and in its output folders only its own.

Every file genlab writes goes through `Outputs.write` (or `write_file` for one file outside an
output folder: a cache entry, a `genlab sample out=...` image): the bytes go to a new temporary
file beside the target, which is fsynced and renamed over it. A crash leaves the old file whole,
and a link at the target is replaced, never written through.

An output folder (a run folder, an export's folder, a report's folder) keeps the list of the files
genlab wrote into it, `.genlab-files`: one path per line, relative to the folder, recorded before
the file appears. genlab replaces and deletes only files on that list, and refuses, naming the
file, to replace any other. The folder itself may be reached through the user's links; below it,
folders are opened one at a time without following links (`O_NOFOLLOW`, each from its parent's
descriptor), so a link planted inside an output folder is refused with its path. This needs the
`dir_fd` system calls of POSIX systems (Linux, macOS).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO, BinaryIO

from genlab.errors import GenlabError, writing

MANIFEST = ".genlab-files"
_TEMP = ".genlab-"  # in the name of every temporary file: .<name>.genlab-<hex>.tmp
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class NotOursError(GenlabError):
    """A file or folder genlab would replace, delete or write into, but did not make."""


def write_file(path: str | Path, data: bytes) -> Path:
    """Replace `path` atomically with `data` (its folder is made if missing); a link at `path` is
    replaced, not followed. For files outside an output folder, whose callers decide what they may
    replace."""
    path = Path(path)
    return Outputs(path.parent, manifest=False).write(path.name, data)


def join(folder: str, name: str) -> str:
    """`folder/name` as a path inside an output folder ("" is the folder itself)."""
    return f"{folder}/{name}" if folder else name


def is_temporary(name: str) -> bool:
    """Whether `name` is one of genlab's temporary files (left behind by a killed write)."""
    return name.startswith(".") and _TEMP in name and name.endswith(".tmp")


class Outputs:
    """An output folder `root` and the files genlab wrote into it (`manifest=False`: a folder
    that keeps no list; its callers check what they replace). Paths given to its methods are
    relative to `root`, with `/` between folders."""

    def __init__(self, root: str | Path, *, manifest: bool = True) -> None:
        self.root, self.manifest = Path(root), manifest

    def path(self, rel: str) -> Path:
        """The path of `rel` ("" is the folder itself)."""
        return self.root / _parts(rel).as_posix() if rel else self.root

    # --- the list -------------------------------------------------------------------------------

    def owned(self) -> set[str]:
        """The files genlab recorded writing here (whether or not they still exist)."""
        if not self.manifest or not self.root.is_dir():
            return set()
        with self._dir((), create=False) as fd:
            try:
                f = os.open(MANIFEST, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except FileNotFoundError:
                return set()
            except OSError as e:
                raise refused(self.root / MANIFEST, e, "read") from None
            with os.fdopen(f, "rb") as text:
                lines = text.read().decode(errors="replace").splitlines()
        return {line for line in lines if _valid(line)}

    def record(self, rels: Iterable[str]) -> None:
        """Add `rels` to the list (files another library wrote here for genlab: TensorBoard's
        event files, a diffusers pipeline)."""
        if not self.manifest:
            return
        owned = self.owned()  # read each time: other writers (threads, processes) append too
        self._append(
            [r for r in dict.fromkeys(_parts(r).as_posix() for r in rels) if r not in owned]
        )

    def _append(self, new: list[str]) -> None:
        """Append `new` paths to the list."""
        if not new:
            return
        with self._dir((), create=True) as fd:
            try:
                f = os.open(MANIFEST, _APPEND, 0o666, dir_fd=fd)
            except OSError as e:
                raise refused(self.root / MANIFEST, e, "write") from None
            with os.fdopen(f, "ab") as text:
                text.write("".join(f"{r}\n" for r in new).encode())

    def foreign(self, ignore: Iterable[str] = (), below: str = "") -> list[str]:
        """Every file, link or other non-folder under `root` (or its folder `below`) that genlab
        did not write here (its list, `ignore`d names and genlab's temporary files aside),
        sorted."""
        start = self.path(below)
        if below and os.path.lexists(start) and (start.is_symlink() or not start.is_dir()):
            return [below]  # where genlab would write a folder
        owned, skip = self.owned(), {MANIFEST, *ignore}
        return sorted(
            rel
            for rel, entry in self._entries(below)
            if not (entry.is_dir(follow_symlinks=False) or is_temporary(entry.name))
            and rel not in owned
            and rel not in skip
        )

    def refuse_foreign(self, targets: Iterable[str], hint: str) -> None:
        """Refuse, before anything is written, if any of `targets` exists and is not genlab's."""
        owned = None
        for rel in targets:
            path = self.path(rel)
            if os.path.lexists(path):
                owned = self.owned() if owned is None else owned
                if not self.manifest or rel not in owned:
                    raise _not_ours(path, hint)

    def check_clear(self, ignore: Iterable[str] = (), why: str = "", below: str = "") -> None:
        """Refuse, with the list, a folder holding anything genlab did not write (`clear`)."""
        foreign = self.foreign(ignore, below)
        if foreign:
            limit = 10
            shown = ", ".join(foreign[:limit])
            if len(foreign) > limit:
                shown += f" and {len(foreign) - limit} more"
            raise NotOursError(
                f"{why}{self.path(below)} holds files that genlab did not "
                f"write ({shown}); genlab deletes only its own (those listed in "
                f"{self.root / MANIFEST}). Move them away, or choose another folder"
            )

    def clear(self, ignore: Iterable[str] = (), below: str = "") -> int:
        """Delete every file genlab wrote here (or in its folder `below`, which goes too) and the
        folders this leaves empty, once nothing else is there (refused with the list otherwise);
        return how many files went."""
        self.check_clear(ignore, below=below)
        if not self.path(below).is_dir():
            return 0
        owned, gone = self.owned(), 0
        deepest_first = sorted(self._entries(below), key=lambda x: -x[0].count("/"))
        for rel, entry in deepest_first:
            parts = PurePosixPath(rel).parts
            with self._dir(parts[:-1], create=False) as fd:
                folder = entry.is_dir(follow_symlinks=False)
                if folder and is_temporary(entry.name):  # a killed write's, all genlab's
                    shutil.rmtree(entry.path)
                elif folder:
                    with contextlib.suppress(OSError):  # kept where something is left
                        os.rmdir(entry.name, dir_fd=fd)
                elif rel in owned or is_temporary(entry.name):
                    os.unlink(entry.name, dir_fd=fd)
                    gone += 1
        if below:
            parts = _parts(below)
            with self._dir(parts.parts[:-1], create=False) as fd:
                os.rmdir(parts.name, dir_fd=fd)
        else:
            with self._dir((), create=False) as fd:
                _replace(fd, MANIFEST, lambda f: None)
        return gone

    # --- writing --------------------------------------------------------------------------------

    def write(
        self, rel: str, data: bytes | Callable[[BinaryIO], object], durable: bool = True
    ) -> Path:
        """Replace `rel` atomically with `data` (bytes, or a function writing to a binary file);
        refused if `rel` exists and genlab did not write it here. `durable`: the file and the
        rename are on disk when this returns (fsync), not only whole for other processes (for
        thousands of small files, such as `genlab sample files=true`'s)."""
        parts = _parts(rel)
        path = self.root / parts.as_posix()
        with writing(path), self._dir(parts.parts[:-1], create=True) as fd:
            self._claim(fd, parts)
            write = data if callable(data) else lambda f: f.write(data)
            _replace(fd, parts.name, write, durable)
        return path

    def copy(self, src: str, rel: str) -> Path:
        """Make `rel` hold `src`'s bytes (both in one folder), atomically: a hard link renamed
        into place (no second write), or a copy where the file system has none."""
        source, parts = _parts(src), _parts(rel)
        if source.parent != parts.parent:
            raise ValueError(f"{src} and {rel} are not in one folder")
        path = self.root / parts.as_posix()
        with writing(path), self._dir(parts.parts[:-1], create=True) as fd:
            self._claim(fd, parts)
            tmp = temporary_name(parts.name)
            try:
                os.link(source.name, tmp, src_dir_fd=fd, dst_dir_fd=fd, follow_symlinks=False)
            except OSError:
                s = os.open(source.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                with os.fdopen(s, "rb") as f:
                    _replace(fd, parts.name, lambda out: _copy(f, out))
                return path
            try:
                os.replace(tmp, parts.name, src_dir_fd=fd, dst_dir_fd=fd)
            except BaseException:
                _unlink(fd, tmp)
                raise
            os.fsync(fd)
        return path

    def append(self, rel: str, encoding: str | None = None) -> IO[str]:
        """`rel` opened for appending text (a log), made if missing."""
        parts = _parts(rel)
        with writing(self.root / parts.as_posix()), self._dir(parts.parts[:-1], True) as fd:
            self._claim(fd, parts)
            return open(os.open(parts.name, _APPEND, 0o666, dir_fd=fd), "a", encoding=encoding)

    def folder(self, rel: str) -> Path:
        """Make the folder `rel` (and those above it) if missing; return its path."""
        parts = _parts(rel)
        with writing(self.root / parts.as_posix()), self._dir(parts.parts, create=True):
            pass
        return self.root / parts.as_posix()

    def remove(self, rels: Iterable[str]) -> None:
        """Delete those of `rels` that genlab wrote here (a missing one is no error)."""
        owned = self.owned()
        for rel in rels:
            parts = _parts(rel)
            if parts.as_posix() not in owned and self.manifest:
                continue
            with contextlib.suppress(FileNotFoundError), self._dir(parts.parts[:-1], False) as fd:
                _unlink(fd, parts.name)

    def remove_temporary(self, rel: str = "") -> None:
        """Delete genlab's temporary files that a killed write left in the folder `rel`."""
        parts = _parts(rel) if rel else PurePosixPath()
        with contextlib.suppress(FileNotFoundError), self._dir(parts.parts, False) as fd:
            for name in os.listdir(fd):
                if is_temporary(name):
                    _unlink(fd, name)

    def rename(self, src: str, rel: str) -> None:
        """Move the folder or file `src` (genlab's, just made) to `rel`, which must not exist."""
        source, parts = _parts(src), _parts(rel)
        with (
            writing(self.root / parts.as_posix()),
            self._dir(source.parts[:-1], False) as a,
            self._dir(parts.parts[:-1], True) as b,
        ):
            os.rename(source.name, parts.name, src_dir_fd=a, dst_dir_fd=b)
            os.fsync(b)

    # --- helpers --------------------------------------------------------------------------------

    def _claim(self, fd: int, parts: PurePosixPath) -> None:
        """Refuse to replace a file that genlab did not write; record the file before it is
        written, so that no file of genlab's is ever missing from the list."""
        rel = parts.as_posix()
        if not self.manifest:
            return
        owned = self.owned()
        if rel in owned:
            return
        try:
            os.stat(parts.name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            self._append([rel])
        else:
            raise _not_ours(
                self.root / rel,
                f"it is not in {self.root / MANIFEST}; move it away, or choose another folder",
            )

    def _entries(self, below: str) -> Iterator[tuple[str, os.DirEntry]]:
        """`_walk` of the folder `below` (nothing where it is no folder)."""
        start = self.path(below)
        return _walk(start, f"{below}/" if below else "") if start.is_dir() else iter(())

    @contextlib.contextmanager
    def _dir(self, parts: tuple[str, ...], create: bool) -> Iterator[int]:
        """A descriptor of the folder `root/parts`, reached without following links below
        `root` (made where missing if `create`)."""
        if create:
            with writing(self.root):
                self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for i, part in enumerate(parts):
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o777, dir_fd=fd)
                try:
                    sub = os.open(part, _DIR, dir_fd=fd)
                except OSError as e:
                    raise refused(self.root / "/".join(parts[: i + 1]), e, "write into") from None
                os.close(fd)
                fd = sub
            yield fd
        finally:
            os.close(fd)


def refused(path: Path, error: OSError, what: str) -> Exception:
    """A link where genlab wants a file or folder of its own is refused with its path; other
    errors are returned as they are."""
    if error.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK) and path.is_symlink():
        return NotOursError(
            f"{path} is a link (to {os.readlink(path)}): genlab does not {what} it, nor follow "
            f"links inside its output folders. Remove the link, or choose another folder"
        )
    return error


def _not_ours(path: Path, hint: str) -> NotOursError:
    return NotOursError(f"{path} exists and genlab did not write it: {hint}")


def _parts(rel: str | PurePosixPath) -> PurePosixPath:
    parts = PurePosixPath(rel)
    if not _valid(str(rel)):
        raise ValueError(f"{rel!r} is not a path inside an output folder")
    return parts


def _valid(rel: str) -> bool:
    """A relative path that stays inside its folder (no `..`, not absolute, not empty)."""
    parts = PurePosixPath(rel).parts
    return bool(parts) and not rel.startswith("/") and ".." not in parts and "\\" not in rel


def _walk(root: Path, prefix: str) -> Iterator[tuple[str, os.DirEntry]]:
    """(relative path, entry) of everything below `root`, a folder after what it holds, not
    descending into links or genlab's temporary folders."""
    with os.scandir(root) as entries:
        for entry in entries:
            rel = f"{prefix}{entry.name}"
            if entry.is_dir(follow_symlinks=False) and not is_temporary(entry.name):
                yield from _walk(Path(entry.path), f"{rel}/")
            yield rel, entry


def as_the_user_makes(tree: Path) -> None:
    """Give the files and folders another library wrote under `tree` (a temporary folder of
    genlab's) the modes of the user's own, as genlab's files have them: 0666 and 0777 less the
    umask (0644 and 0755 under 022), never through a link."""
    mask = os.umask(0)
    os.umask(mask)
    for path in [tree, *tree.rglob("*")]:
        if path.is_symlink():
            continue
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def temporary_name(name: str) -> str:
    """A fresh name for a temporary file or folder that will become `name`."""
    return f".{name}{_TEMP}{secrets.token_hex(4)}.tmp"


def _replace(fd: int, name: str, write: Callable[[BinaryIO], object], durable: bool = True) -> None:
    """Write a new temporary file in the folder `fd`, fsync it (if `durable`) and rename it over
    `name`."""
    tmp = temporary_name(name)
    f = os.open(tmp, _NEW, 0o666, dir_fd=fd)
    try:
        with os.fdopen(f, "wb") as out:
            write(out)
            out.flush()
            if durable:
                os.fsync(out.fileno())
        os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
    except BaseException:
        _unlink(fd, tmp)
        raise
    if durable:
        os.fsync(fd)  # the rename is on disk


def _unlink(fd: int, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=fd)


def _copy(src: BinaryIO, out: BinaryIO) -> None:
    while block := src.read(1 << 20):
        out.write(block)
