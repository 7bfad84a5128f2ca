"""Batches in a per-epoch seeded order: drawn on the device from images held there (no
per-sample Python), or read from disk by DataLoader workers for sets too large to hold."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from genlab.data.datasets import ImageData, ImageFiles
from genlab.data.degrade import Degradation, batch_stream
from genlab.errors import GenlabError, require_at_least

# images in [-1, 1], and their condition: labels, degraded images (`degrade`) or None
Batch = tuple[Tensor, Tensor | None]


class DeviceLoader:
    """Endless iterator of (images in [-1, 1], labels or None); the last partial batch is dropped.

    The order depends only on (seed, epoch), so `state_dict()` is a few integers. With `world`
    processes, each epoch's permutation is cut into `world` equal shards and process `rank`
    draws batches of `batch_size` from its own. `memory_format` is that of the batches;
    `augment` (if given) transforms each batch on the device; `degrade` (if given) makes each
    batch's condition from its images, in place of its labels. The images live on the device.
    """

    def __init__(
        self,
        data: ImageData | ImageFiles,
        batch_size: int,
        device: torch.device,
        seed: int = 0,
        *,
        rank: int = 0,
        world: int = 1,
        memory_format: torch.memory_format = torch.contiguous_format,
        augment: Callable[[Tensor], Tensor] | None = None,
        degrade: Degradation | None = None,
    ):
        shard = len(data) // world
        if batch_size > shard:
            per = f" per process ({world} processes share {len(data)})" if world > 1 else ""
            raise ValueError(
                f"batch_size={batch_size} is larger than the data set{per} ({shard} images)"
            )
        self.size, self.device, self.memory_format = len(data), device, memory_format
        self.labels = None if data.labels is None else data.labels.to(self.order_device)
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.augment, self.degrade = augment, degrade
        self.batches_per_epoch = shard // batch_size
        self.images = self._hold(data)
        self.epoch, self.index = 0, 0
        self._order = self.shard(0)

    @property
    def order_device(self) -> torch.device:
        """Where the permutations and labels live."""
        return self.device

    def _hold(self, data: ImageData) -> Tensor:
        return data.images.to(self.device, memory_format=self.memory_format)

    def _read(self, idx: Tensor) -> tuple[Tensor, Tensor | None]:
        """The uint8 images and labels at `idx`, on the device."""
        return self.images[idx], None if self.labels is None else self.labels[idx]

    def _fetch(self, idx: Tensor) -> tuple[Tensor, Tensor | None]:
        """The next batch of this epoch's order (its indices are `idx`)."""
        return self._read(idx)

    def permutation(self, epoch: int) -> Tensor:
        """The order of the whole data set in `epoch`: a function of (seed, epoch) alone."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.size, generator=gen).to(self.order_device)

    def shard(self, epoch: int) -> Tensor:
        """This process's part of the epoch's permutation."""
        order = self.permutation(epoch)
        return order[: len(order) - len(order) % self.world][self.rank :: self.world]

    def examples(self, n: int) -> Tensor:
        """`n` uint8 images spread evenly through the set (every class, as it is sorted), on the
        device: the real row of sample grids."""
        spread = torch.linspace(0, self.size - 1, n).long().to(self.order_device)
        return self._read(spread)[0]

    def __iter__(self) -> DeviceLoader:
        return self

    def __next__(self) -> Batch:
        if self.index == self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
            self._order = self.shard(self.epoch)
        start = self.index * self.batch_size
        images, labels = self._fetch(self._order[start : start + self.batch_size])
        self.index += 1
        images = normalize(images)
        if self.augment is not None:
            images = self.augment(images)
        if self.degrade is not None:
            place = (self.index - 1) * self.world + self.rank  # the batch's place in the epoch
            gen = batch_stream(self.seed, self.epoch, place, images.device)
            return images, self.degrade(images, gen)
        return images, labels

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


class StreamLoader(DeviceLoader):
    """A `DeviceLoader` over images read from disk: `num_workers` DataLoader processes decode
    the batches of the same seeded order ahead of the training loop, and each batch is then
    copied to the device (pinned and asynchronous on CUDA). The position counts the batches
    taken, not those prefetched, so a checkpoint resumes at the exact next batch."""

    def __init__(self, data: ImageFiles, *args, num_workers: int = 4, **kwargs) -> None:
        require_at_least(0, num_workers=num_workers)
        self.num_workers, self._batches = num_workers, None
        super().__init__(data, *args, **kwargs)

    @property
    def order_device(self) -> torch.device:
        return torch.device("cpu")

    def _hold(self, data: ImageFiles) -> None:  # type: ignore[override]
        self.files = data  # read batch by batch, never decoded whole for training

    def _read(self, idx: Tensor) -> tuple[Tensor, Tensor | None]:
        images = torch.stack([self.files.read(i) for i in idx.tolist()])
        labels = None if self.labels is None else self.labels[idx].to(self.device)
        return images.to(self.device, memory_format=self.memory_format), labels

    def _fetch(self, idx: Tensor) -> tuple[Tensor, Tensor | None]:
        """The workers' next batch: the same `idx`, as they follow the same order."""
        if self._batches is None:
            self._batches = self._epoch_batches()
        try:
            images, labels = next(self._batches)
        except GenlabError as e:
            message = str(e).strip()
            if "Original Traceback" not in message:
                raise
            # raised in a worker: DataLoader put its traceback in the message; the last line
            # is `module.Error: what happened`
            raise type(e)(message.splitlines()[-1].partition(": ")[2]) from None
        images = images.to(self.device, memory_format=self.memory_format, non_blocking=True)
        if self.labels is None:
            return images, None
        return images, labels.to(self.device, non_blocking=True)

    def _epoch_batches(self):
        """Batches of this epoch's order, from the current position to its end."""
        order = self._order.tolist()
        batches = [
            order[i * self.batch_size : (i + 1) * self.batch_size]
            for i in range(self.index, self.batches_per_epoch)
        ]
        return iter(
            DataLoader(
                _Read(self.files),
                batch_sampler=batches,
                num_workers=self.num_workers,
                pin_memory=self.device.type == "cuda",
                # its own generator: starting workers must not draw from the global RNG, or a
                # resume mid-epoch would shift the training noise
                generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch),
            )
        )

    def __next__(self) -> Batch:
        if self.index == self.batches_per_epoch:
            self._batches = None
        return super().__next__()

    def load_state_dict(self, state: dict[str, int]) -> None:
        super().load_state_dict(state)
        self._batches = None


class _Read(Dataset):
    """(uint8 image, label or -1) by index, in a DataLoader worker."""

    def __init__(self, files: ImageFiles) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        label = -1 if self.files.labels is None else int(self.files.labels[i])
        return self.files.read(i), label


def normalize(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float().div_(127.5).sub_(1.0)
