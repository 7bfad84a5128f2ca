"""Optimizers from config (one torch class, a learning rate per network) and guarded updates."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Literal

import torch
from torch import Tensor
from torch.optim import Optimizer


class OptimizerSpec:
    """Builds the optimizer of each network: `lr` for the generator (or the VAE), `d_lr` for the
    discriminator (defaults to `lr`; set it for two time-scale updates)."""

    def __init__(
        self, impl: Callable[..., Optimizer], lr: float, d_lr: float | None = None
    ) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if d_lr is not None and d_lr <= 0:
            raise ValueError(f"d_lr must be > 0 (or null to use lr), got {d_lr}")
        self.impl, self.lr, self.d_lr = impl, float(lr), d_lr

    def __call__(self, params: Iterable[Tensor], role: Literal["g", "d"] = "g") -> Optimizer:
        lr = self.d_lr if role == "d" and self.d_lr is not None else self.lr
        return self.impl(params, lr=lr)


class NonFiniteError(RuntimeError):
    """A loss or gradient that is NaN or infinite; the update was not applied."""

    def __init__(self, name: str, loss: float, grad_norm: float) -> None:
        super().__init__(f"non-finite {name} update (loss {loss}, gradient norm {grad_norm})")
        self.name, self.loss, self.grad_norm = name, loss, grad_norm


class Updater:
    """Backward pass and optimizer step for one network, with the run's guards.

    The gradient norm is measured before the step; a NaN or infinite loss or gradient raises
    `NonFiniteError` before any weight changes. `grad_clip` (if set) clips the total norm.
    """

    def __init__(self, grad_clip: float | None = None) -> None:
        self.grad_clip = grad_clip

    def __call__(self, loss: Tensor, optimizer: Optimizer, name: str) -> Tensor:
        """Apply one update; return the gradient norm (before clipping)."""
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        max_norm = self.grad_clip if self.grad_clip is not None else math.inf
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if not (torch.isfinite(loss) and torch.isfinite(norm)):
            optimizer.zero_grad(set_to_none=True)
            raise NonFiniteError(name, float(loss.detach()), float(norm))
        optimizer.step()
        return norm.detach()
