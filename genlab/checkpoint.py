"""Checkpoints: atomic writes, and loading that never runs code from the file."""

from __future__ import annotations

import io
import os
import pickle
import random
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genlab.errors import GenlabError, writing


def _file_mode() -> int:
    """The mode `open` gives new files under this process's umask (read once, at import)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


def _replace_atomically(path: Path, write) -> None:
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, FILE_MODE)  # mkstemp's are private
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write `state` to `path` so that a crash at any moment leaves the old file intact."""
    _replace_atomically(path, lambda f: torch.save(state, f))


def checkpoint_bytes(state: dict[str, Any]) -> bytes:
    """`state` as the bytes of a checkpoint file: a snapshot that later changes to its tensors
    do not touch, for `write_atomically` in another thread."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def write_atomically(data: bytes, path: Path) -> None:
    """Write `data` to `path` so that a crash at any moment leaves the old file intact."""
    _replace_atomically(path, lambda f: f.write(data))


def copy_checkpoint(src: Path, dst: Path) -> None:
    """Atomically make `dst` hold `src`'s bytes (used for `last.pt`): a hard link renamed into
    place (no second write), or a copy where the file system has no hard links."""
    tmp = dst.with_name(f".{dst.name}.link.tmp")
    with writing(dst):
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:
            tmp.unlink(missing_ok=True)

            def write(f) -> None:
                with open(src, "rb") as s:
                    shutil.copyfileobj(s, f)

            _replace_atomically(dst, write)
            return
        os.replace(tmp, dst)
        _sync_folder(dst.parent)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load tensors and plain containers only (`weights_only=True`): a pickle that carries code is
    refused; a file that is no checkpoint, truncated or corrupt gets a clear error naming it."""
    path = Path(path)
    if not path.is_file():
        raise GenlabError(f"checkpoint {path} does not exist")
    _check_archive(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[0]
        raise GenlabError(
            f"checkpoint {path} was refused: it holds objects other than tensors and plain "
            f"containers, which could run code when loaded ({reason})"
        ) from None
    except Exception as e:
        raise GenlabError(f"checkpoint {path} is truncated or corrupt ({e})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise GenlabError(f"{path} is not a genlab checkpoint (no model weights in it)")
    return state


def _check_archive(path: Path) -> None:
    """torch.save writes an uncompressed zip archive: refuse anything else before unpickling (a
    text file, a truncated download, or compressed entries that could inflate without bound)."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError) as e:
        raise GenlabError(
            f"{path} is truncated, or not a checkpoint at all: torch.save writes a zip archive, "
            f"and this file is not one ({e})"
        ) from None
    if any(entry.compress_type != zipfile.ZIP_STORED for entry in entries):
        raise GenlabError(
            f"{path} is not a checkpoint: it holds compressed entries, which "
            "torch.save never writes"
        )


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's (CPU and CUDA) random generators (numpy takes the seed
    modulo 2**32)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every random generator's state, as tensors and plain values (loadable with weights_only)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "cached": cached,
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


@contextmanager
def own_random_streams() -> Iterator[None]:
    """Run an observation of training (sample grids, an evaluation) on random streams of its own:
    every global generator (python, numpy, torch, CUDA) is as before once it is done, so
    observing a run never changes it."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def find_resume(resume: str | None, run_dir: Path, key: str = "trainer.resume") -> Path | None:
    """The checkpoint `trainer.resume` names: `auto` is this run folder's `last.pt` if it exists;
    a path is a checkpoint file, or a run folder whose `checkpoints/last.pt` is used."""
    if resume is None:
        return None
    if resume == "auto":
        last = run_dir / "checkpoints" / "last.pt"
        return last if last.is_file() else None
    path = Path(resume).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise GenlabError(f"{key}={resume}: no checkpoint at {path}")
    return path


def prune(folder: Path, keep: int | None) -> None:
    """Delete all but the `keep` newest `step_*.pt` files (`None` keeps them all), and temporary
    files that a killed save left behind."""
    for stale in folder.glob(".*.tmp"):
        stale.unlink(missing_ok=True)
    if keep is None:
        return
    periodic = sorted(folder.glob("step_*.pt"))
    for old in periodic[: max(0, len(periodic) - keep)]:
        old.unlink(missing_ok=True)
