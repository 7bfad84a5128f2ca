"""Checkpoints: atomic writes, and loading that never runs code from the file."""

from __future__ import annotations

import io
import pickle
import random
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genlab.errors import GenlabError
from genlab.files import write_file


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write `state` to `path` so that a crash at any moment leaves the old file intact."""
    write_file(path, checkpoint_bytes(state))


def checkpoint_bytes(state: dict[str, Any]) -> bytes:
    """`state` as the bytes of a checkpoint file: a snapshot that later changes to its tensors
    do not touch, for a write in another thread."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


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
    _check_fields(state, path)
    return state


def _check_fields(state: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint whose fields are not of the types genlab writes, naming the field."""

    def bad(field: str, what: str) -> GenlabError:
        return GenlabError(f"{path} is not a checkpoint genlab can use: its {field} is not {what}")

    model = state["model"]
    if not isinstance(model, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()
    ):
        raise bad("model", "a mapping of names to tensors")
    step = state.get("step", 0)
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise bad("step", "a whole number >= 0")
    for field in ("optimizers", "schedulers", "updater", "loader"):
        if not isinstance(state.get(field, {}), dict):
            raise bad(field, "a mapping")
    for i, rng in enumerate(state.get("rng_ranks", [state["rng"]] if "rng" in state else [])):
        if not _valid_rng(rng):
            raise bad("rng" if "rng_ranks" not in state else f"rng_ranks[{i}]", RNG_STATE)


RNG_STATE = "the random states genlab saves (python's, numpy's MT19937 and torch's)"


def _valid_rng(rng: Any) -> bool:
    """Whether `rng` has the shapes `rng_state` writes (checked before anything is set from it:
    a stride-0 tensor of a billion keys must not be copied)."""
    if not isinstance(rng, dict):
        return False
    python, n, t = rng.get("python"), rng.get("numpy"), rng.get("torch")
    return (
        isinstance(python, tuple | list)
        and len(python) == 3
        and isinstance(python[1], tuple | list)
        and len(python[1]) == 625
        and all(isinstance(x, int) for x in python[1])
        and isinstance(n, dict)
        and isinstance(n.get("keys"), torch.Tensor)
        and tuple(n["keys"].shape) == (624,)
        and isinstance(n.get("pos"), int)
        and isinstance(t, torch.Tensor)
        and t.dtype == torch.uint8
        and t.ndim == 1
        and t.numel() <= 1 << 16
    )


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
    with open(path, "rb") as f:
        start = f.read(4)
    if start != b"PK\x03\x04":  # zipfile also reads an archive after bytes of anything else
        raise GenlabError(
            f"{path} is not a checkpoint: torch.save writes a zip archive from the file's first "
            "byte, and this file starts with something else"
        )
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
