"""Checkpoints: atomic writes, and loading that never runs code from the file."""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from genlab.errors import GenlabError


def _replace_atomically(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write `state` to `path` so that a crash at any moment leaves the old file intact."""
    _replace_atomically(path, lambda f: torch.save(state, f))


def copy_checkpoint(src: Path, dst: Path) -> None:
    """Atomically replace `dst` with a copy of `src` (used for `last.pt`)."""

    def write(f) -> None:
        with open(src, "rb") as s:
            shutil.copyfileobj(s, f)

    _replace_atomically(dst, write)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load tensors and plain containers only (`weights_only=True`): a pickle that carries code is
    refused, a truncated or corrupt file gets a clear error naming it."""
    path = Path(path)
    if not path.is_file():
        raise GenlabError(f"checkpoint {path} does not exist")
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
