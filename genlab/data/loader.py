"""Batches drawn on the device from a per-epoch seeded permutation: no per-sample Python."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from genlab.data.datasets import ImageData

Batch = tuple[Tensor, Tensor | None]  # images in [-1, 1], labels or None


class DeviceLoader:
    """Endless iterator of (images in [-1, 1], labels or None); the last partial batch is dropped.

    The order depends only on (seed, epoch), so `state_dict()` is a few integers. With `world`
    processes, each epoch's permutation is cut into `world` equal shards and process `rank`
    draws batches of `batch_size` from its own. `memory_format` is that of the batches;
    `augment` (if given) transforms each batch on the device.
    """

    def __init__(
        self,
        data: ImageData,
        batch_size: int,
        device: torch.device,
        seed: int = 0,
        *,
        rank: int = 0,
        world: int = 1,
        memory_format: torch.memory_format = torch.contiguous_format,
        augment: Callable[[Tensor], Tensor] | None = None,
    ):
        shard = len(data) // world
        if batch_size > shard:
            per = f" per process ({world} processes share {len(data)})" if world > 1 else ""
            raise ValueError(
                f"batch_size={batch_size} is larger than the data set{per} ({shard} images)"
            )
        self.images = data.images.to(device, memory_format=memory_format)
        self.labels = None if data.labels is None else data.labels.to(device)
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.augment = augment
        self.batches_per_epoch = shard // batch_size
        self.epoch, self.index = 0, 0
        self._order = self.shard(0)

    def permutation(self, epoch: int) -> Tensor:
        """The order of the whole data set in `epoch`: a function of (seed, epoch) alone."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.images), generator=gen).to(self.images.device)

    def shard(self, epoch: int) -> Tensor:
        """This process's part of the epoch's permutation."""
        order = self.permutation(epoch)
        return order[: len(order) - len(order) % self.world][self.rank :: self.world]

    def __iter__(self) -> DeviceLoader:
        return self

    def __next__(self) -> Batch:
        if self.index == self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
            self._order = self.shard(self.epoch)
        start = self.index * self.batch_size
        idx = self._order[start : start + self.batch_size]
        self.index += 1
        images = normalize(self.images[idx])
        if self.augment is not None:
            images = self.augment(images)
        return images, None if self.labels is None else self.labels[idx]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index, "images_per_batch": self.global_batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue where `state` stopped; if it was written with another total batch (another
        number of processes), at the same number of images into the epoch."""
        index = int(state["index"]) * int(state.get("images_per_batch", self.global_batch))
        self.epoch = int(state["epoch"])
        self.index = min(index // self.global_batch, self.batches_per_epoch)
        self._order = self.shard(self.epoch)

    @property
    def global_batch(self) -> int:
        """Images per batch over all processes."""
        return self.batch_size * self.world


def normalize(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float().div_(127.5).sub_(1.0)
