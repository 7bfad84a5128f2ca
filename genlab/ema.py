"""An exponential moving average of a network, which any family can keep (`model.ema_decay`) and
sample from: EMA = decay * EMA + (1 - decay) * network, from `start` updates on, beginning with
an exact copy.

It is torch's `AveragedModel` (the same checkpoint keys: `module.*` and `n_averaged`), updated
without its host syncs: the weight of the network is a device tensor (0 before the start, 1 at
the first average, then 1 - decay), so a training step that updates it never waits for the GPU.
Integer buffers (BatchNorm's batch count) are copied.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel


class EMA(AveragedModel):
    def __init__(self, network: nn.Module, decay: float, start: int = 0) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1) or null, got {decay}")
        if start < 0:
            raise ValueError(f"ema_start must be >= 0, got {start}")
        super().__init__(network, use_buffers=True)
        self.requires_grad_(False)
        self.decay, self.start = decay, start

    @torch.no_grad()
    def update(self, network: nn.Module, updates: Tensor) -> None:
        """Average `network` in, once `updates` (a device tensor: the network's updates so far)
        exceeds `start`."""
        started = updates > self.start
        weight = torch.where(self.n_averaged == 0, 1.0, 1.0 - self.decay) * started
        averaged, current = [], []
        pairs = zip(
            [*self.module.parameters(), *self.module.buffers()],
            [*network.parameters(), *network.buffers()],
            strict=True,
        )
        for e, g in pairs:
            if e.is_floating_point():
                averaged.append(e)
                current.append(g.detach())
            else:
                e.copy_(torch.where(started, g, e))
        if averaged:  # exact at the ends: weight 0 keeps the average, weight 1 copies
            torch._foreach_mul_(averaged, 1.0 - weight)
            torch._foreach_add_(averaged, torch._foreach_mul(current, weight))
        self.n_averaged += started

    def or_network(self, network: nn.Module) -> nn.Module:
        """The average once averaging has begun, else `network` (a host sync: for sampling)."""
        return self.module if self.n_averaged > 0 else network
