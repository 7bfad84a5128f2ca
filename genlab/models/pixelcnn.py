"""The autoregressive family: a PixelCNN (the network: `genlab.models.gated_pixelcnn`) models
the exact likelihood of the 8-bit values, sub-pixel by sub-pixel in raster order (R, G, B within
a pixel), and its sampler (`genlab.models.autoregressive`) draws them in that order."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from genlab.data.loader import Batch, normalize
from genlab.errors import require_at_least
from genlab.images import square_side, to_grid
from genlab.losses import (
    LEVELS,
    ExactNLL,
    categorical_log_prob,
    from_levels,
    image_nll,
    logistic_mixture_log_prob,
    to_levels,
)
from genlab.models.autoregressive import Autoregressive
from genlab.models.base import (
    Condition,
    Exported,
    GridInputs,
    OneNetwork,
    SampleSettings,
    standalone_node,
)
from genlab.models.common import class_rows, conditional_classes, eval_mode, row_length
from genlab.optim import Updater

Likelihood = Literal["softmax", "logistic_mixture"]


class PixelCNN(OneNetwork):
    """An autoregressive `network` whose output at each sub-pixel is the distribution of its
    8-bit value given the ones before: a softmax over the 256 values (`likelihood=softmax`) or
    a discretized mixture of `mixtures` logistics (`logistic_mixture`, PixelCNN++). Sampling
    draws sub-pixel after sub-pixel by the inverse CDF of a uniform, the uniform being Phi(z)
    for Gaussian latents z (one per sub-pixel): the same latents give the same images, and an
    export maps latents to images. A class-conditional model trained with `label_dropout` (the
    share of labels replaced by the null label) samples with its `sampler`'s (the solver
    group's) classifier-free guidance. It trains by `objective`, the exact likelihood. Grids
    show at most `grid_images` images (each costs a pass of the network per sub-pixel)."""

    roles: ClassVar[dict[str, str]] = {"model": "PixelCNN"}
    conditions: ClassVar[frozenset[str]] = frozenset({"none", "labels"})
    abilities: ClassVar[frozenset[str]] = frozenset({"likelihood", "temperature"})
    sample_modes: ClassVar[frozenset[str]] = frozenset({"complete"})

    def __init__(
        self,
        network: Callable[..., nn.Module],
        sampler: Autoregressive | None = None,
        objective: ExactNLL | None = None,
        likelihood: Likelihood = "softmax",
        mixtures: int = 5,
        conditional: bool = False,
        label_dropout: float = 0.0,
        grid_images: int = 16,
        init_from: str | None = None,
        freeze: Sequence[str] = (),
        *,
        channels: int,
        image_size: int,
        num_classes: int | None = None,
    ) -> None:
        if likelihood not in ("softmax", "logistic_mixture"):
            raise ValueError(f"likelihood must be softmax or logistic_mixture, got {likelihood!r}")
        require_at_least(1, mixtures=mixtures, grid_images=grid_images)
        sampler = Autoregressive() if sampler is None else sampler  # runs from before solvers
        if not 0 <= label_dropout < 1:
            raise ValueError(f"label_dropout must be in [0, 1), got {label_dropout}")
        classes = conditional_classes(conditional, num_classes, "PixelCNN")
        if sampler.guidance != 1 and not (classes and label_dropout):
            raise ValueError(
                f"solver.guidance={sampler.guidance} needs a class-conditional PixelCNN trained "
                "with label dropout (model.conditional=true, model.label_dropout > 0); others "
                "sample with guidance 1"
            )
        super().__init__(channels * image_size * image_size, classes, channels, image_size)
        shape = dict(self.shape)
        self.per_value, self.grid_images = likelihood, grid_images  # `likelihood` names the method
        self.sampler, self.label_dropout = sampler, label_dropout if classes else 0.0
        self.objective = ExactNLL() if objective is None else objective
        outputs = LEVELS if likelihood == "softmax" else 3 * mixtures
        self.network = network(
            outputs=outputs, num_classes=classes, null_label=bool(self.label_dropout), **shape
        )
        self.finish(init_from, freeze)

    def log_prob(self, out: Tensor, levels: Tensor) -> Tensor:
        """log p of each sub-pixel's value (N, C, H, W) from the network's output."""
        if self.per_value == "softmax":
            return categorical_log_prob(out, levels)
        return logistic_mixture_log_prob(out, levels)

    def value_log_probs(self, out: Tensor) -> Tensor:
        """log p of all 256 values of one sub-pixel, (N, 256), from its output (N, outputs)."""
        if self.per_value == "softmax":
            return F.log_softmax(out, dim=1)
        values = torch.arange(LEVELS, device=out.device).expand(len(out), LEVELS)
        return logistic_mixture_log_prob(out[:, :, None].expand(-1, -1, LEVELS), values)

    def nll(self, x: Tensor, labels: Tensor | None) -> Tensor:
        """-log p(x) in nats per image, for images in [-1, 1] (their 8-bit values)."""
        levels = to_levels(x)
        out = self.trained("network")(from_levels(levels), labels)
        return image_nll(self.log_prob(out.float(), levels))

    # --- training -------------------------------------------------------------------------------

    def train_step(
        self, batches: Iterator[Batch], update: Updater, metrics: bool = True
    ) -> dict[str, Tensor]:
        """One update of the negative log-likelihood of a batch (nats per image), logged in bits
        per dimension too."""
        x, labels = next(batches)
        if not self.num_classes:
            labels = None
        elif self.label_dropout:  # the null label, for classifier-free guidance
            dropped = torch.rand(len(x), device=x.device) < self.label_dropout
            labels = torch.where(dropped, self.num_classes, labels)
        with update.autocast():
            value = self.objective(self.nll(x, labels))
        norm = update(value, "model", measure=metrics)
        nats = value.detach()
        values = {"loss/nll": nats, "loss/bits_per_dim": nats / (x[0].numel() * math.log(2))}
        if metrics:
            values["grad_norm/model"] = norm
        return values

    # --- sampling -------------------------------------------------------------------------------

    def sample(
        self,
        z: Tensor,
        labels: Tensor | None = None,
        temperature: float = 1.0,
        start: Tensor | None = None,
        first_row: int = 0,
    ) -> Tensor:
        """Images in [-1, 1] for latents `z` (N, C*H*W) by the model's sampler, from `first_row`
        (the rows above come from `start`)."""
        return self.sampler.sample(self, z, labels, temperature, start, first_row)

    def _latents(self, n: int, gen: torch.Generator) -> Tensor:
        device = next(self.parameters()).device
        return torch.randn(n, self.latent_dim, device=device, generator=gen)

    @torch.no_grad()
    def generate(self, n: int, gen: torch.Generator, condition: Condition = None) -> Tensor:
        """`n` images in [-1, 1] (of classes `condition`) at temperature 1, their latents from
        `gen`."""
        return self.sample_at_temperature(n, gen, condition, 1.0)

    def sample_at_temperature(
        self,
        n: int,
        gen: torch.Generator,
        condition: Condition,
        temperature: float,
    ) -> Tensor:
        """`temperature`: `generate` at another temperature (< 1: the likelier values)."""
        z = self._latents(n, gen)
        return self.sample(z, condition if self.num_classes else None, temperature)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """An exported PixelCNN samples: latents (and labels) to images."""
        return self.sample(z, labels)

    def sampling_protocol(self) -> dict[str, Any]:
        """The solver and its guidance."""
        return self.sampler.protocol()

    def fixed_inputs(self, num: int, examples: Batch, seed: int) -> GridInputs:
        """Latents (and labels: a row per class for a conditional model) for at most
        `grid_images` samples, and a row of real images whose lower halves are completed."""
        num = min(num, self.grid_images)
        device = examples[0].device
        labels = class_rows(self.num_classes, num, device)
        num = num if labels is None else len(labels)
        gen = torch.Generator(device=device).manual_seed(seed)
        row = min(square_side(num), len(examples[0]))
        z = torch.randn(num + row, self.latent_dim, device=device, generator=gen)
        real_labels = None
        if self.num_classes:  # the real images' own classes when the examples have them
            known = examples[1]
            real_labels = known[:row] if known is not None else torch.arange(row, device=device)
            real_labels = real_labels % self.num_classes
        return GridInputs(z[:num], labels, examples[0][:row], z[num:], real_labels)

    @torch.no_grad()
    def sample_grids(self, fixed: GridInputs) -> dict[str, Tensor]:
        """The samples, and real images (upper row) above their completions from the middle
        row down (lower row)."""
        images = self.sample(fixed.latents, fixed.condition)
        real = fixed.real
        done = self.complete(real, fixed.real_latents, fixed.real_labels)
        return {
            "samples": to_grid(images, row_length(len(images), self.num_classes)),
            "completions": to_grid(torch.cat([real, done]), len(real)),
        }

    def complete(
        self, real: Tensor, z: Tensor, labels: Tensor | None, temperature: float = 1.0
    ) -> Tensor:
        """`real` images (in [-1, 1]) with their lower half drawn anew."""
        first_row = self.shape["image_size"] // 2
        return self.sample(z, labels, temperature, start=real, first_row=first_row)

    def sample_mode(
        self, mode: str, sampler: SampleSettings, gen: torch.Generator, real: Callable
    ) -> tuple[Iterator[Tensor], int]:
        """`complete`: rows of held-out images (spread over the classes), each row followed by
        the same images with their lower half sampled (given their true class for a
        conditional model), `sampler.num_images` in all."""
        data = real()
        nrow = square_side(sampler.num_images)
        count = min(len(data.images) // nrow, max(1, sampler.num_images // (2 * nrow))) * nrow
        picked = torch.linspace(0, len(data.images) - 1, count).long()
        device = next(self.parameters()).device
        temperature = sampler.temperature or 1.0

        def rows() -> Iterator[Tensor]:
            per_batch = max(1, sampler.batch_size // nrow) * nrow
            for part in picked.split(per_batch):
                x = normalize(data.images[part].to(device))
                labels = data.labels[part].to(device) if self.num_classes else None
                done = self.complete(x, self._latents(len(x), gen), labels, temperature)
                pairs = torch.stack([t.view(-1, nrow, *x.shape[1:]) for t in (x, done)], 1)
                yield pairs.flatten(0, 2).cpu()

        return rows(), nrow

    def export_sampler(self, node: DictConfig) -> Exported:
        """The model itself: its `forward` maps latents to images."""
        built = standalone_node(node, **self.shape, num_classes=self.num_classes)
        built.update(init_from=None, freeze=[])
        built.pop("objective", None)  # it samples only
        return Exported(self, built, "image")

    # --- likelihood -----------------------------------------------------------------------------

    @torch.no_grad()
    def likelihood(
        self, images: Tensor, k: int, seed: int
    ) -> tuple[dict[str, float], dict[str, Any]]:
        """The exact negative log-likelihood of `images` (their 8-bit values), nats per image
        and bits per dimension (`k` and `seed` unused: nothing is estimated). A conditional
        model scores p(x), the mean of p(x | y) over the classes (a uniform class prior)."""
        total = 0.0
        with eval_mode(self):
            for x in images.split(250):
                if not self.num_classes:
                    total += float(self.nll(x.float(), None).sum())
                    continue
                per_class = [
                    self.nll(x.float(), torch.full((len(x),), c, device=x.device))
                    for c in range(self.num_classes)
                ]
                log_px = torch.logsumexp(-torch.stack(per_class), 0) - math.log(self.num_classes)
                total -= float(log_px.sum())
        nats = total / len(images)
        bits = nats / (images[0].numel() * math.log(2))
        return {"nll": nats, "nll_bits_per_dim": bits}, self._protocol()

    def _protocol(self) -> dict[str, Any]:
        names = {"softmax": "softmax over 256 values", "logistic_mixture": "logistic mixture"}
        given = "; p(x) = mean over classes of p(x | y)" if self.num_classes else ""
        return {
            "likelihood": f"exact, of the 8-bit values ({names[self.per_value]} per "
            f"sub-pixel; no dequantization{given})"
        }
