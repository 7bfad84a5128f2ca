"""The `augment` config group: batched augmentation on the training device.

Two kinds, both on whole batches with per-image random parameters from torch's global RNG (so
checkpoints resume them exactly):

- data augmentation of the real images (flips, shifts, rotations, scaling, brightness/contrast
  jitter), applied by the loader;
- DiffAugment (Zhao et al., 2020) for GANs: differentiable colour, translation and cutout applied
  to every image the discriminator sees, real and generated alike, in both the discriminator and
  the generator step, so the generator never learns the augmentations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

POLICIES = ("color", "translation", "cutout")


def affine_jitter(x: Tensor, translate: float, rotate: float, scale: float) -> Tensor:
    """Random shifts (up to `translate` of the size), rotations (up to `rotate` degrees) and
    scalings (1 ± `scale`) of images in [-1, 1]; the background (-1) fills the borders."""
    n = len(x)

    def uniform(*shape: int) -> Tensor:
        return torch.rand(*shape, device=x.device) * 2 - 1

    angle = uniform(n) * math.radians(rotate)
    factor = 1 + uniform(n) * scale
    shift = uniform(n, 2) * 2 * translate
    cos, sin = torch.cos(angle) / factor, torch.sin(angle) / factor
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x + 1, grid, align_corners=False) - 1


def diff_augment(x: Tensor, policy: tuple[str, ...] = POLICIES) -> Tensor:
    """DiffAugment's colour, translation (1/8 of the size) and cutout (1/2) on images in [-1, 1]:
    differentiable in `x`, different random parameters per image."""
    n, _, h, w = x.shape
    if "color" in policy:
        x = x + (torch.rand(n, 1, 1, 1, device=x.device) - 0.5)
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * (torch.rand(n, 1, 1, 1, device=x.device) * 2) + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * (torch.rand(n, 1, 1, 1, device=x.device) + 0.5) + mean
    if "translation" in policy:
        dy, dx = (torch.randint(-(s // 8), s // 8 + 1, (n, 1, 1), device=x.device) for s in (h, w))
        rows = (torch.arange(h, device=x.device)[None, :, None] + dy + 1).clamp(0, h + 1)
        cols = (torch.arange(w, device=x.device)[None, None, :] + dx + 1).clamp(0, w + 1)
        padded = F.pad(x, (1, 1, 1, 1))  # zeros: what leaves the frame
        batch = torch.arange(n, device=x.device)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
    if "cutout" in policy:
        ch, cw = h // 2, w // 2
        cy = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), device=x.device)
        cx = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), device=x.device)
        ys = torch.arange(h, device=x.device)[None, :, None]
        xs = torch.arange(w, device=x.device)[None, None, :]
        dy, dx = ys - cy + ch // 2, xs - cx + cw // 2  # an h/2 x w/2 square around (cy, cx)
        inside = (dy >= 0) & (dy < ch) & (dx >= 0) & (dx < cw)
        x = x * (~inside)[:, None].to(x.dtype)
    return x


class Augment:
    """Data augmentation of real batches (`flip`, `translate`, `rotate`, `scale`, `jitter`) and,
    for GANs, DiffAugment (`diff`: a comma-separated policy, e.g. `color,translation,cutout`)."""

    def __init__(
        self,
        flip: bool = False,
        translate: float = 0.0,
        rotate: float = 0.0,
        scale: float = 0.0,
        jitter: float = 0.0,
        diff: str | None = None,
    ) -> None:
        for name, value, high in (
            ("translate", translate, 0.5),
            ("rotate", rotate, 180),
            ("scale", scale, 0.5),
            ("jitter", jitter, 1.0),
        ):
            if not 0 <= value <= high:
                raise ValueError(f"{name} must be between 0 and {high}, got {value}")
        policy = tuple(p.strip() for p in diff.split(",") if p.strip()) if diff else ()
        unknown = [p for p in policy if p not in POLICIES]
        if unknown:
            raise ValueError(f"diff: unknown policy {unknown}; choose from {', '.join(POLICIES)}")
        self.flip, self.translate, self.rotate, self.scale, self.jitter = (
            flip,
            translate,
            rotate,
            scale,
            jitter,
        )
        self.policy = policy

    @property
    def augments_data(self) -> bool:
        return bool(self.flip or self.translate or self.rotate or self.scale or self.jitter)

    def data(self, x: Tensor) -> Tensor:
        """Augment a batch of real images in [-1, 1]."""
        n = len(x)
        if self.flip:
            flipped = torch.rand(n, 1, 1, 1, device=x.device) < 0.5
            x = torch.where(flipped, x.flip(-1), x)
        if self.translate or self.rotate or self.scale:
            x = affine_jitter(x, self.translate, self.rotate, self.scale)
        if self.jitter:
            brightness = (torch.rand(n, 1, 1, 1, device=x.device) * 2 - 1) * self.jitter
            contrast = 1 + (torch.rand(n, 1, 1, 1, device=x.device) * 2 - 1) * self.jitter
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = ((x - mean) * contrast + mean + brightness).clamp(-1, 1)
        return x

    def discriminator_input(self, x: Tensor) -> Tensor:
        """DiffAugment for everything the discriminator sees (identity without a policy)."""
        return diff_augment(x, self.policy) if self.policy else x
