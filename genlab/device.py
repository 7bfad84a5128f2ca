"""The `device` config group: pick the torch device, refusing one this machine lacks."""

from __future__ import annotations

import os

import torch


def select_device(name: str = "auto") -> torch.device:
    """`auto` (cuda, then mps, then cpu), `cpu`, `cuda`, `cuda:N` or `mps`."""
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps and mps.is_available())
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_ok else "cpu")
    kind, _, index = name.partition(":")
    if kind == "cpu" and not index:
        return torch.device("cpu")
    if kind == "cuda" and (not index or index.isdigit()):
        if not torch.cuda.is_available():
            raise ValueError(
                "CUDA is not available on this machine (torch.cuda.is_available() is False); "
                "use device=cpu or device=auto"
            )
        if index and int(index) >= torch.cuda.device_count():
            raise ValueError(f"{name} does not exist: {torch.cuda.device_count()} CUDA device(s)")
        return torch.device(name)
    if kind == "mps" and not index:
        if not mps_ok:
            raise ValueError("MPS is not available on this machine; use device=cpu or device=auto")
        return torch.device("mps")
    raise ValueError(f"name must be auto, cpu, cuda, cuda:N or mps, got {name!r}")


def set_determinism(deterministic: bool, device: torch.device) -> None:
    """Deterministic kernels (for bit-identical runs on CUDA), or cuDNN's fastest algorithms.

    Attention's fused CUDA kernels (flash, memory-efficient, cuDNN) accumulate their backward in
    no fixed order unless torch runs in strict mode, which would refuse every other op that has
    no deterministic kernel; so deterministic runs take the math kernel, deterministic both ways.
    """
    if deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read by cuBLAS at startup
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic
    fused = device.type != "cuda" or not deterministic
    torch.backends.cuda.enable_flash_sdp(fused)
    torch.backends.cuda.enable_mem_efficient_sdp(fused)
    torch.backends.cuda.enable_cudnn_sdp(fused)
