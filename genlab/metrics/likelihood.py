"""The dequantization under which every family's likelihood is measured on the same 8-bit data:
a density's NLL of uniformly dequantized images, plus log 128 per dimension, bounds the NLL of
the 8-bit values (Theis et al. 2016)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from genlab.losses import LEVELS, to_levels


def dequantize(images: Tensor, generator: torch.Generator) -> Tensor:
    """Uniform dequantization: images in [-1, 1] whose 8-bit values are v become
    (v + u) / 128 - 1 with u ~ U[0, 1) per sub-pixel, spread over each value's bin of width
    2/256. A density's NLL of these, plus log 128 per dimension, bounds the NLL of the 8-bit
    values from above (Theis et al. 2016)."""
    u = torch.rand(images.shape, generator=generator, device=images.device)
    return (to_levels(images) + u) / (LEVELS / 2) - 1


BIN_NATS = math.log(LEVELS / 2)  # per dimension: -log of a bin's width (2/256) in [-1, 1] units
