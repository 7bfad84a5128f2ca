"""Optimizers from config: one torch optimizer class, with its own learning rate per network."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

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
