"""The `sampler` settings of `genlab sample`: grids of samples, interpolations, reconstructions."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from genlab.data.loader import normalize
from genlab.images import square_side
from genlab.models.common import eval_mode


def slerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """Spherical interpolation between Gaussian latents (rows of a and b), for each t in [0, 1]:
    the path stays where the prior has its mass, unlike a straight line."""
    a_n, b_n = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    omega = torch.acos((a_n * b_n).sum(1).clamp(-1 + 1e-7, 1 - 1e-7))[:, None, None]
    t = t[None, :, None]
    return (
        torch.sin((1 - t) * omega) * a[:, None] + torch.sin(t * omega) * b[:, None]
    ) / torch.sin(omega)


class Sampler:
    """`mode`: `samples` (`num` images; a conditional model gives one row per class, or only
    class `label`), `interpolate` (rows from seed to seed+1 latents in `steps` steps) or
    `reconstruct` (VAE: real test images above their reconstructions). The same `seed` gives
    the same images."""

    def __init__(
        self,
        mode: Literal["samples", "interpolate", "reconstruct"] = "samples",
        num: int = 64,
        seed: int = 0,
        label: int | None = None,
        steps: int = 8,
    ) -> None:
        if mode not in ("samples", "interpolate", "reconstruct"):
            raise ValueError(f"mode must be samples, interpolate or reconstruct, got {mode!r}")
        if num < 1:
            raise ValueError(f"num must be >= 1, got {num}")
        if steps < 2:
            raise ValueError(f"steps must be >= 2, got {steps}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.mode, self.num, self.seed, self.label, self.steps = mode, num, seed, label, steps

    def check(self, model: Any) -> None:
        """Refuse settings that do not fit the model, before any image is made."""
        classes = getattr(model, "num_classes", 0)
        if self.label is not None and not classes:
            raise ValueError("label is only for class-conditional models (model=cgan)")
        if self.label is not None and not 0 <= self.label < classes:
            raise ValueError(f"label must be in 0..{classes - 1}, got {self.label}")
        if self.mode == "reconstruct" and not hasattr(model, "encode"):
            raise ValueError("mode=reconstruct needs a VAE")

    def labels(self, model: Any, n: int, device: torch.device) -> Tensor | None:
        classes = getattr(model, "num_classes", 0)
        if not classes:
            return None
        if self.label is not None:
            return torch.full((n,), self.label, device=device)
        return torch.arange(classes, device=device).repeat_interleave(max(1, n // classes))

    @torch.no_grad()
    def __call__(
        self, model: Any, loss: Any, device: torch.device, real: Tensor
    ) -> tuple[Tensor, int]:
        """Images in [-1, 1] and how many go in a grid row."""
        gen = torch.Generator(device=device).manual_seed(self.seed)
        classes = getattr(model, "num_classes", 0)
        if self.mode == "samples":
            labels = self.labels(model, self.num, device)
            n = self.num if labels is None else len(labels)
            images = model.generate(n, loss, gen, labels)
            nrow = n // classes if classes and self.label is None else square_side(n)
            return images, nrow
        if self.mode == "interpolate":
            rows = max(1, self.num // self.steps)
            ends = torch.randn(2, rows, model.latent_dim, device=device, generator=gen)
            t = torch.linspace(0, 1, self.steps, device=device)
            z = slerp(ends[0], ends[1], t).flatten(0, 1)
            labels = None
            if classes:
                row_labels = self.labels(model, rows * classes, device)[::classes][:rows]
                labels = row_labels.repeat_interleave(self.steps)
            with eval_mode(model):
                return model.decode_latents(z, loss, labels), self.steps
        # reconstruct: rows of real test images, each followed by its reconstruction
        nrow = square_side(self.num)
        count = min(len(real), max(nrow, self.num // nrow * nrow)) // nrow * nrow
        spread = torch.linspace(0, len(real) - 1, count).long()  # across the classes
        x = normalize(real[spread].to(device))
        with eval_mode(model):
            recon = loss.mean(model.decoder(model.encode(x)[0]))
        pairs = torch.stack([x.view(-1, nrow, *x.shape[1:]), recon.view(-1, nrow, *x.shape[1:])], 1)
        return pairs.flatten(0, 2), nrow
