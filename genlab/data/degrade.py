"""The `condition` config group: degradations that make (condition, target) pairs from any data
set, for models that generate from an image (`condition=lowres condition.scale=4`,
`condition=mask`, `condition=grey`, `condition=noise`).

A degradation is a pure function of target images (N, C, H, W) in [-1, 1] and a random stream:
the loader applies it to each training batch (after augmentation, from a stream seeded by the
batch's place in the run, so a resume is exact), the evaluator to the held-out split (from its
own seed). Its output is quantized to 8 bits, as a PNG holds it, so that a model trained on it
meets the same kind of input in a user's folder of images (`genlab sample input=FOLDER`, read
through `prepare`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from genlab.errors import require_at_least
from genlab.images import as_image, enlarged

# ITU-R BT.601 luma weights of R, G and B, as JPEG, PIL's convert("L") and the SR papers use them
LUMA = (0.299, 0.587, 0.114)


def quantize(images: Tensor) -> Tensor:
    """Images in [-1, 1] rounded to the 256 levels of an 8-bit image (and clamped)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


class Degradation(ABC):
    """A condition made from a target image. `border`: pixels at each edge that paired metrics
    leave out (a super-resolution scale, as the SR papers crop); `scale`: the target's side over
    the condition's."""

    border: int = 0
    scale: int = 1

    @abstractmethod
    def shape(self, channels: int, size: int) -> tuple[int, int, int]:
        """The (C, H, W) of the conditions of `channels` x `size` x `size` targets."""

    @abstractmethod
    def __call__(self, images: Tensor, gen: torch.Generator) -> Tensor:
        """Conditions for `images` in [-1, 1], drawing only from `gen`."""

    def check(self, channels: int, size: int) -> None:
        """Refuse a data set this degradation cannot pair (before any work)."""
        return None

    def prepare(self, images: Tensor) -> Tensor:
        """The condition an image a user gives stands for: uint8 (N, C', H, W) with the
        condition's channels, to [-1, 1]."""
        return images.float() / 127.5 - 1

    def protocol(self) -> dict[str, Any]:
        """What the condition is, written beside every paired metric."""
        return {"condition": type(self).__name__.lower()}

    def baseline(self, condition: Tensor, channels: int) -> Tensor:
        """The image a condition stands for without a model, the floor every paired metric is
        read against: its bicubic enlargement (a low resolution), or itself as an image (a
        noisy, grey or masked one)."""
        return as_image(enlarged(condition, self.scale), channels).clamp(-1, 1)

    def baseline_name(self) -> str:
        """What `baseline` does, for the protocol."""
        return (
            "bicubic enlargement of the condition" if self.scale > 1 else "the condition as it is"
        )


class Lowres(Degradation):
    """Downsampling by `scale` (super-resolution): `bicubic` (antialiased, as PIL and MATLAB's
    imresize) or `area` (the mean of each scale x scale block); optionally after a Gaussian
    `blur` (its sigma in the target's pixels; kernel 2 * ceil(3 sigma) + 1, reflected edges) and
    before white Gaussian `noise` (its sigma in 8-bit levels): the "BD" and "DN" degradations of
    the SR papers (Zhang et al. 2018: blur 1.6 at x3; noise 30)."""

    def __init__(
        self,
        scale: int = 2,
        filter: Literal["bicubic", "area"] = "bicubic",
        blur: float = 0.0,
        noise: float = 0.0,
    ) -> None:
        require_at_least(2, scale=scale)
        require_at_least(0, blur=blur, noise=noise)
        if filter not in ("bicubic", "area"):
            raise ValueError(f"filter must be 'bicubic' or 'area', got {filter!r}")
        self.scale, self.filter, self.border = scale, filter, scale
        self.blur, self.noise = blur, noise

    def check(self, channels: int, size: int) -> None:
        if size % self.scale:
            raise ValueError(
                f"condition.scale={self.scale} does not divide the data set's image size "
                f"{size}: choose a scale that does, or another dataset.image_size"
            )

    def shape(self, channels: int, size: int) -> tuple[int, int, int]:
        return channels, size // self.scale, size // self.scale

    def __call__(self, images: Tensor, gen: torch.Generator) -> Tensor:
        if self.blur:
            from torchvision.transforms.v2.functional import gaussian_blur

            side = 2 * math.ceil(3 * self.blur) + 1
            images = gaussian_blur(images, [side, side], [self.blur, self.blur])
        if self.filter == "area":
            small = F.avg_pool2d(images, self.scale)
        else:
            size = images.shape[-1] // self.scale
            small = F.interpolate(images, size=size, mode="bicubic", antialias=True)
        if self.noise:
            small = small + _gaussian(small, gen) * (self.noise / 127.5)
        return quantize(small)

    def protocol(self) -> dict[str, Any]:
        blur = f" blur sigma {self.blur:g}" if self.blur else ""
        noise = f" noise sigma {self.noise:g}/255" if self.noise else ""
        return {"condition": f"lowres x{self.scale}{blur} {self.filter}{noise}"}


class Mask(Degradation):
    """A square hole of side `size` times the image's (inpainting), at the `centre` or at a
    `random` place per image. The condition is the image with the hole set to 0 (mid-grey) and a
    channel more that is 1 where the image is known and -1 in the hole (a user's image gives it
    as its alpha channel: transparent is the hole)."""

    def __init__(self, size: float = 0.5, where: Literal["centre", "random"] = "centre") -> None:
        if not 0 < size < 1:
            raise ValueError(
                f"size must be in (0, 1), the hole's side over the image's, got {size}"
            )
        if where not in ("centre", "random"):
            raise ValueError(f"where must be 'centre' or 'random', got {where!r}")
        self.size, self.where = size, where

    def shape(self, channels: int, size: int) -> tuple[int, int, int]:
        return channels + 1, size, size

    def __call__(self, images: Tensor, gen: torch.Generator) -> Tensor:
        n, _, h, w = images.shape
        side = max(1, round(self.size * h))
        if self.where == "centre":
            top = torch.full((n,), (h - side) // 2, device=images.device)
            left = torch.full((n,), (w - side) // 2, device=images.device)
        else:
            corners = torch.rand(2, n, device=gen.device, generator=gen).to(images.device)
            top = (corners[0] * (h - side + 1)).long()
            left = (corners[1] * (w - side + 1)).long()
        rows = torch.arange(h, device=images.device)[None, :, None]
        cols = torch.arange(w, device=images.device)[None, None, :]
        hole = (rows >= top[:, None, None]) & (rows < top[:, None, None] + side)
        hole = hole & (cols >= left[:, None, None]) & (cols < left[:, None, None] + side)
        return self._join(images, ~hole[:, None])

    @staticmethod
    def _join(images: Tensor, known: Tensor) -> Tensor:
        image = torch.where(known, quantize(images), torch.zeros((), device=images.device))
        return torch.cat([image, known.to(images.dtype) * 2 - 1], dim=1)

    def prepare(self, images: Tensor) -> Tensor:
        """An image with an alpha channel (its last): transparent pixels (alpha < 128) are the
        hole."""
        known = images[:, -1:] >= 128
        return self._join(images[:, :-1].float() / 127.5 - 1, known)

    def protocol(self) -> dict[str, Any]:
        return {"condition": f"mask {self.size:g} {self.where}"}


class Grey(Degradation):
    """Colour to its luma (ITU-R BT.601), for colourization; needs a colour data set."""

    def check(self, channels: int, size: int) -> None:
        if channels != 3:
            raise ValueError(
                f"grey makes a colour image grey, and the data set has {channels} channel(s): "
                "choose a colour data set (dataset=cifar10, or image_folder)"
            )

    def shape(self, channels: int, size: int) -> tuple[int, int, int]:
        return 1, size, size

    def __call__(self, images: Tensor, gen: torch.Generator) -> Tensor:
        weights = torch.tensor(LUMA, device=images.device, dtype=images.dtype)
        return quantize((images * weights[:, None, None]).sum(1, keepdim=True))


class Noise(Degradation):
    """Additive white Gaussian noise of standard deviation `sigma` in 8-bit levels (denoising;
    DnCNN's sigma 25 is 25/255 of the range)."""

    def __init__(self, sigma: float = 25.0) -> None:
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0 (8-bit levels), got {sigma}")
        self.sigma = sigma

    def shape(self, channels: int, size: int) -> tuple[int, int, int]:
        return channels, size, size

    def __call__(self, images: Tensor, gen: torch.Generator) -> Tensor:
        return quantize(images + _gaussian(images, gen) * (self.sigma / 127.5))

    def protocol(self) -> dict[str, Any]:
        return {"condition": f"noise sigma {self.sigma:g}/255"}


def _gaussian(like: Tensor, gen: torch.Generator) -> Tensor:
    """Standard normal noise the shape of `like`, drawn from `gen` (on its own device)."""
    return torch.randn(like.shape, device=gen.device, generator=gen).to(like.device)


def batch_stream(seed: int, epoch: int, index: int, device: torch.device) -> torch.Generator:
    """The random stream of a training batch's degradation: a function of its place in the run
    (seed, epoch, batch), so a resumed run draws the same conditions."""
    gen = torch.Generator(device=device)
    return gen.manual_seed(((seed * 1_000_003 + epoch) * 1_000_033 + index) % 2**63)
