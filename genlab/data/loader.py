"""Batches drawn on the device from a per-epoch seeded permutation: no per-sample Python."""

from __future__ import annotations

import torch
from torch import Tensor

from genlab.data.datasets import ImageData

Batch = tuple[Tensor, Tensor | None]  # images in [-1, 1], labels or None


class DeviceLoader:
    """Endless iterator of (images in [-1, 1], labels or None); the last partial batch is dropped.

    The order depends only on (seed, epoch), so `state_dict()` is two integers.
    """

    def __init__(self, data: ImageData, batch_size: int, device: torch.device, seed: int = 0):
        if batch_size > len(data):
            raise ValueError(
                f"batch_size={batch_size} is larger than the data set ({len(data)} images)"
            )
        self.images = data.images.to(device)
        self.labels = None if data.labels is None else data.labels.to(device)
        self.batch_size, self.seed = batch_size, seed
        self.batches_per_epoch = len(data) // batch_size
        self.epoch, self.index = 0, 0
        self._order = self.permutation(0)

    def permutation(self, epoch: int) -> Tensor:
        """The order of the data set in `epoch`: a function of (seed, epoch) alone."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.images), generator=gen).to(self.images.device)

    def __iter__(self) -> DeviceLoader:
        return self

    def __next__(self) -> Batch:
        if self.index == self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
            self._order = self.permutation(self.epoch)
        start = self.index * self.batch_size
        idx = self._order[start : start + self.batch_size]
        self.index += 1
        images = normalize(self.images[idx])
        return images, None if self.labels is None else self.labels[idx]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._order = self.permutation(self.epoch)


def normalize(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float().div_(127.5).sub_(1.0)
