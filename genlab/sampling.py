"""The `sampler` settings of `genlab sample`: grids of samples, interpolations, reconstructions."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from genlab.data.datasets import ImageData
from genlab.data.degrade import Degradation
from genlab.data.loader import normalize
from genlab.errors import require_at_least
from genlab.images import paired_rows, square_side
from genlab.models.base import Family, require
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


def truncated_normal(n: int, dim: int, threshold: float, generator: torch.Generator) -> Tensor:
    """`n` latents from N(0, I) truncated to [-threshold, threshold] in every coordinate."""
    z = torch.empty(n, dim, device=generator.device)
    return torch.nn.init.trunc_normal_(z, a=-threshold, b=threshold, generator=generator)


GENERIC_MODES = ("samples", "interpolate", "reconstruct")  # the latter two are abilities


class Sampler:
    """`mode`: `samples` (`num_images` images; a conditional model gives one row per class, or
    only class `label`), `interpolate` (rows from seed to seed+1 latents in `steps` steps, for a
    family that maps latents to images), `reconstruct` (real test images above their
    reconstructions, for one that encodes images), or a mode of the family's own
    (`Family.sample_modes`). The same `seed` gives the same images. At most `batch_size` images
    are made at once, so any `num_images` fits in memory (a grid holds at most `MAX_GRID`;
    `genlab sample files=true` writes any number). `truncation` t: samples decoded from latents
    drawn from N(0, I) truncated to [-t, t] (the truncation trick of BigGAN, Brock et al. 2019:
    fidelity for variety), for a family that maps latents to images. `temperature` T: every
    distribution sampled from raised to the power 1/T (< 1: likelier, less varied images), for a
    family that samples at a temperature (PixelCNN)."""

    MAX_GRID = 4096

    def __init__(
        self,
        mode: str = "samples",
        num_images: int = 64,
        seed: int = 0,
        label: int | None = None,
        steps: int = 8,
        batch_size: int = 500,
        truncation: float | None = None,
        temperature: float | None = None,
    ) -> None:
        if not mode.isidentifier():
            raise ValueError(
                f"mode must be {', '.join(GENERIC_MODES)} or a model's own, got {mode!r}"
            )
        require_at_least(1, num_images=num_images)
        require_at_least(2, steps=steps)
        if not 0 <= seed < 2**32:
            raise ValueError(f"seed must be in 0..{2**32 - 1}, got {seed}")
        require_at_least(1, batch_size=batch_size)
        if truncation is not None and truncation <= 0:
            raise ValueError(f"truncation must be > 0 (or null: none), got {truncation}")
        if temperature is not None and temperature <= 0:
            raise ValueError(f"temperature must be > 0 (or null: 1), got {temperature}")
        self.truncation, self.temperature = truncation, temperature
        self.mode, self.num_images, self.seed = mode, num_images, seed
        self.label, self.steps = label, steps
        self.batch_size = batch_size

    def check(self, model: Family) -> None:
        """Refuse settings that do not fit the model, before any image is made."""
        classes = model.num_classes
        if self.label is not None and not classes:
            raise ValueError("sampler.label is only for class-conditional models (model=cgan)")
        if self.label is not None and not 0 <= self.label < classes:
            raise ValueError(f"sampler.label must be in 0..{classes - 1}, got {self.label}")
        if self.truncation is not None:
            require(model, "interpolate", "sampler.truncation")
            if self.mode != "samples":
                raise ValueError(f"sampler.truncation is for sampler.mode=samples, not {self.mode}")
        if self.temperature is not None:
            require(model, "temperature", "sampler.temperature")
        if self.mode in ("interpolate", "reconstruct"):
            require(model, self.mode, f"sampler.mode={self.mode}")
        elif self.mode != "samples" and self.mode not in model.sample_modes:
            modes = ", ".join(["samples", *sorted(model.abilities & set(GENERIC_MODES))])
            own = ", ".join(sorted(model.sample_modes))
            raise ValueError(
                f"sampler.mode={self.mode} is not a mode of {type(model).__name__}, which has "
                f"{modes}{'; its own: ' + own if own else ''}"
            )

    def labels(self, model: Family, n: int, device: torch.device) -> Tensor | None:
        classes = model.num_classes
        if not classes:
            return None
        if self.label is not None:
            return torch.full((n,), self.label, device=device)
        return torch.arange(classes, device=device).repeat_interleave(max(1, n // classes))

    def __call__(
        self,
        model: Family,
        device: torch.device,
        real: Callable[[], ImageData],
        degrade: Degradation | None = None,
    ) -> tuple[Iterator[Tensor], int]:
        """Batches of images in [-1, 1] (on the CPU), and how many images go in a grid row.
        `real()` gives the held-out data set (`.images` uint8, `.labels`), for modes that start
        from real images; `degrade` makes the conditions of a model that generates from an
        image (its samples: held-out images' conditions, what it makes of them, the images)."""
        gen = torch.Generator(device=device).manual_seed(self.seed)
        classes = model.num_classes
        if self.mode == "samples" and degrade is not None:
            images, nrow = real().images, min(8, self.num_images)
            count = min(len(images), max(nrow, self.num_images // nrow * nrow)) // nrow * nrow
            return self._restorations(model, gen, degrade, images, nrow, count), nrow
        if self.mode == "samples":
            labels = self.labels(model, self.num_images, device)
            n = self.num_images if labels is None else len(labels)
            nrow = n // classes if classes and self.label is None else square_side(n)
            return self._samples(model, gen, n, labels), nrow
        if self.mode == "interpolate":
            rows = max(1, self.num_images // self.steps)
            return self._interpolations(model, gen, rows), self.steps
        if self.mode != "reconstruct":
            return model.sample_mode(self.mode, self, gen, real)
        images = real().images
        nrow = square_side(self.num_images)
        count = min(len(images), max(nrow, self.num_images // nrow * nrow)) // nrow * nrow
        return self._reconstructions(model, device, images, nrow, count), nrow

    @torch.no_grad()
    def _samples(self, model, gen, n: int, labels: Tensor | None) -> Iterator[Tensor]:
        for start in range(0, n, self.batch_size):
            part = None if labels is None else labels[start : start + self.batch_size]
            count = min(self.batch_size, n - start)
            if self.temperature is not None:
                yield model.sample_at_temperature(count, gen, part, self.temperature).cpu()
                continue
            if self.truncation is None:
                yield model.generate(count, gen, part).cpu()
                continue
            z = truncated_normal(count, model.latent_dim, self.truncation, gen)
            with eval_mode(model):
                yield model.decode_latents(z, part).cpu()

    @torch.no_grad()
    def _interpolations(self, model, gen, rows: int) -> Iterator[Tensor]:
        """Rows of `steps` images along the slerp between the latents of two seeds' draws."""
        device = gen.device
        ends = torch.randn(2, rows, model.latent_dim, device=device, generator=gen)
        t = torch.linspace(0, 1, self.steps, device=device)
        classes = model.num_classes
        row_labels = (
            self.labels(model, rows * classes, device)[::classes][:rows] if classes else None
        )
        per_batch = max(1, self.batch_size // self.steps)
        for start in range(0, rows, per_batch):
            z = slerp(ends[0, start : start + per_batch], ends[1, start : start + per_batch], t)
            labels = None
            if row_labels is not None:
                labels = row_labels[start : start + per_batch].repeat_interleave(self.steps)
            with eval_mode(model):
                yield model.decode_latents(z.flatten(0, 1), labels).cpu()

    @torch.no_grad()
    def _restorations(self, model, gen, degrade, real, nrow: int, count: int):
        """Rows of conditions of held-out images (spread across the set, drawn from a stream of
        their own), what the model makes of them, and the images."""
        spread = torch.linspace(0, len(real) - 1, count).long()
        degrading = torch.Generator(device=gen.device).manual_seed(self.seed + 1)
        rows_per_batch = max(1, self.batch_size // nrow)
        for start in range(0, count, rows_per_batch * nrow):
            x = normalize(real[spread[start : start + rows_per_batch * nrow]].to(gen.device))
            condition = degrade(x, degrading)
            made = model.generate(len(x), gen, condition)
            yield paired_rows(condition, made, x, nrow).cpu()

    @torch.no_grad()
    def _reconstructions(self, model, device, real, nrow: int, count: int):
        """Rows of real test images, each followed by its row of reconstructions."""
        spread = torch.linspace(0, len(real) - 1, count).long()  # across the classes
        rows_per_batch = max(1, self.batch_size // nrow)
        for start in range(0, count, rows_per_batch * nrow):
            x = normalize(real[spread[start : start + rows_per_batch * nrow]].to(device))
            recon = model.reconstruct(x)
            pairs = torch.stack(
                [x.view(-1, nrow, *x.shape[1:]), recon.view(-1, nrow, *x.shape[1:])], 1
            )
            yield pairs.flatten(0, 2).cpu()
