"""The autoregressive family: Gated PixelCNN (van den Oord et al. 2016), an exact likelihood of
the 8-bit values, sub-pixel by sub-pixel in raster order (R, G, B within a pixel).

The network has a vertical stack that sees the rows above and a horizontal stack that sees the
pixels to the left in the same row, fed by the vertical one (no blind spot). Instead of masking
half of each kernel, the vertical convolutions use kernels of the upper half only and the
horizontal ones kernels of the left half, shifted by padding (the same outputs at fewer
operations). Only the current pixel's own channels need a mask: feature channels are split into
one group per image channel, and group g sees groups < g of the input (type A, the first layer)
or <= g (type B, every later layer).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn
from tqdm.auto import tqdm

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
from genlab.models.base import Exported, OneNetwork, complete
from genlab.models.common import class_rows, conditional_classes, eval_mode, row_length
from genlab.optim import Updater
from genlab.solvers import Autoregressive, guidance_labels, guided

Likelihood = Literal["softmax", "logistic_mixture"]


def groups(channels: int, image_channels: int) -> Tensor:
    """The image channel (0 = R) each of `channels` feature channels belongs to, in blocks."""
    return torch.arange(channels) * image_channels // channels


def channel_mask(out_groups: Tensor, in_groups: Tensor, strict: bool) -> Tensor:
    """(out, in) 0/1: output group g may see input group h < g (`strict`, type A) or h <= g."""
    out, inp = out_groups[:, None], in_groups[None, :]
    return (inp < out if strict else inp <= out).float()


class VerticalConv(nn.Conv2d):
    """A k x k convolution that sees only rows above the output pixel's (`first`) or up to its
    own: a kernel of those rows, padded at the top and cropped."""

    def __init__(self, inp: int, out: int, kernel: int, first: bool) -> None:
        half = kernel // 2
        super().__init__(inp, out, (half if first else half + 1, kernel))
        self.pad = (half, half, half, 0)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, self.pad))[:, :, : x.shape[2]]

    def row(self, x: Tensor, i: int) -> Tensor:
        """`forward` at row `i` of `x` (N, in, H, W) alone, (N, out, 1, W): from the rows it
        sees, zeros above the image."""
        height, first = self.kernel_size[0], i - self.pad[2]  # first: the first row it sees
        part = x[:, :, max(0, first) : first + height]
        return super().forward(F.pad(part, (*self.pad[:2], height - part.shape[2], 0)))


class MaskedConv(nn.Conv2d):
    """A convolution whose weight is multiplied by its `mask` buffer (set by the subclass)."""

    mask: Tensor

    def column(self, window: Tensor) -> Tensor:
        """The output (N, out) at one pixel, from the input its kernel covers there (N, in, kernel
        width; zeros where it reaches left of the image): `forward` there, as one matrix
        product."""
        return F.linear(window.flatten(1), (self.weight * self.mask).flatten(1), self.bias)


class HorizontalConv(MaskedConv):
    """A 1 x k convolution that sees the pixels left of the output pixel and, through
    `channel_mask`, the allowed channels of the pixel itself."""

    def __init__(self, inp: int, out: int, kernel: int, center: Tensor) -> None:
        super().__init__(inp, out, (1, kernel // 2 + 1))
        mask = torch.ones_like(self.weight)
        mask[:, :, 0, -1] = center
        self.register_buffer("mask", mask, persistent=False)
        self.pad = (kernel // 2, 0, 0, 0)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(F.pad(x, self.pad), self.weight * self.mask, self.bias)


class PointwiseConv(MaskedConv):
    """A 1 x 1 convolution whose output groups see only the allowed input groups."""

    def __init__(self, inp: int, out: int, mask: Tensor) -> None:
        super().__init__(inp, out, 1)
        self.register_buffer("mask", mask[:, :, None, None], persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)


def gate(x: Tensor) -> Tensor:
    """tanh(first half) * sigmoid(second half) of the channels."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


def class_table(num_classes: int, null_label: bool, width: int) -> nn.Embedding:
    """A learnt row of `width` per class, and with `null_label` a row of zeros that never trains
    for the null label `num_classes` (classifier-free guidance's unconditional model: no class
    bias, no class maps)."""
    null = num_classes if null_label else None
    return nn.Embedding(num_classes + null_label, width, padding_idx=null)


class GatedLayer(nn.Module):
    """A gated residual layer of both stacks (type B), with a class bias in its gates and, given
    `label_map` channels of class maps, a 1 x 1 convolution of them added too. The vertical
    stack's pre-activation reaches the horizontal stack through a 1 x 1 `link`."""

    def __init__(
        self,
        features: int,
        kernel: int,
        image_channels: int,
        num_classes: int,
        label_map: int,
        null_label: bool = False,
    ) -> None:
        super().__init__()
        g = groups(features, image_channels)
        gates = torch.cat([g, g])  # the tanh half and the sigmoid half
        self.vertical = VerticalConv(features, 2 * features, kernel, first=False)
        self.horizontal = HorizontalConv(
            features, 2 * features, kernel, channel_mask(gates, g, strict=False)
        )
        self.vertical_to_horizontal = nn.Conv2d(2 * features, 2 * features, 1)
        self.residual = PointwiseConv(features, features, channel_mask(g, g, strict=False))
        self.label = class_table(num_classes, null_label, 2 * features) if num_classes else None
        self.label_map = nn.Conv2d(label_map, 2 * features, 1, bias=False) if label_map else None

    def bias(self, labels: Tensor | None, maps: Tensor | None) -> Tensor | float:
        """The class's bias of the gates, plus the convolved class `maps` where they are given
        (cut to the pixels the gates are computed at)."""
        if self.label is None or labels is None:
            return 0.0
        bias = self.label(labels)[:, :, None, None]
        return bias if maps is None else bias + self.label_map(maps)

    def vertical_step(self, conv: Tensor, bias: Tensor | float) -> tuple[Tensor, Tensor]:
        """The vertical stack's next features, and its link to the horizontal stack, from the
        vertical convolution's output `conv`."""
        pre = conv + bias
        return gate(pre), self.vertical_to_horizontal(pre)

    def horizontal_step(self, h: Tensor, link: Tensor, bias: Tensor | float) -> Tensor:
        return h + self.residual(gate(self.horizontal(h) + link + bias))

    def horizontal_column(self, window: Tensor, link: Tensor) -> Tensor:
        """`horizontal_step` at one pixel: its input's columns up to the pixel's (N, features,
        kernel width) and the link plus class terms there (N, 2 features)."""
        h = window[..., -1]
        return h + self.residual.column(gate(self.horizontal.column(window) + link))

    def forward(
        self, v: Tensor, h: Tensor, labels: Tensor | None, maps: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        bias = self.bias(labels, maps)
        v, link = self.vertical_step(self.vertical(v), bias)
        return v, self.horizontal_step(h, link, bias)


class GatedPixelCNN(nn.Module):
    """Images in [-1, 1] (and labels) -> `outputs` parameters per sub-pixel, (N, outputs, C, H,
    W): a type-A `first_kernel` layer, `layers` gated layers of `kernel`, and two 1 x 1 layers
    on the horizontal stack's `features` channels. A class-conditional network has a class bias
    in every gate and, with `label_map` > 0 (ignored without classes), learnt class maps of
    `label_map` channels at the image's size that every gate adds through a 1 x 1 convolution:
    the paper's location-dependent conditioning, so a class can say where its strokes lie (zero
    at first: the plain bias). With `null_label`, label `num_classes` is the null label of
    classifier-free guidance: no class bias and no class maps.

    Sampling draws a row pixel by pixel. The vertical stack at a row sees only the rows above,
    so `row_links` computes it once per row, at that row alone from each layer's rows above it,
    which it keeps (`stack_rows`); `column_output` then runs only the horizontal stack, at the
    pixel drawn alone: its convolutions see only columns to the left, whose features it keeps
    (`column_inputs`). The same numbers as `forward`, at a fraction of the work."""

    def __init__(
        self,
        channels: int,
        image_size: int,
        outputs: int,
        num_classes: int = 0,
        features: int = 64,
        layers: int = 8,
        kernel: int = 3,
        first_kernel: int = 7,
        label_map: int = 0,
        null_label: bool = False,
    ) -> None:
        super().__init__()
        require_at_least(channels, features=features)
        require_at_least(1, layers=layers)
        require_at_least(0, label_map=label_map)
        label_map = label_map if num_classes else 0  # class maps only for classes
        for name, value in (("kernel", kernel), ("first_kernel", first_kernel)):
            if value < 3 or value % 2 == 0:
                raise ValueError(f"{name} must be odd and >= 3, got {value}")
        self.channels, self.outputs = channels, outputs
        g, pixel = groups(features, channels), torch.arange(channels)
        self.vertical = VerticalConv(channels, features, first_kernel, first=True)
        self.horizontal = HorizontalConv(
            channels, features, first_kernel, channel_mask(g, pixel, strict=True)
        )
        self.layers = nn.ModuleList(
            GatedLayer(features, kernel, channels, num_classes, label_map, null_label)
            for _ in range(layers)
        )
        self.map_shape = (label_map, image_size, image_size)
        self.class_maps = None
        if label_map:
            self.class_maps = class_table(num_classes, null_label, math.prod(self.map_shape))
            nn.init.zeros_(self.class_maps.weight)
        head = groups(channels * outputs, channels)
        self.hidden = PointwiseConv(features, features, channel_mask(g, g, strict=False))
        self.out = PointwiseConv(features, channels * outputs, channel_mask(head, g, strict=False))

    def maps(self, labels: Tensor | None, top: int, height: int, width: int) -> Tensor | None:
        """The class maps of `labels` at rows `top` to `top + height` and the first `width`
        columns (None without them)."""
        if self.class_maps is None or labels is None:
            return None
        maps = self.class_maps(labels).view(len(labels), *self.map_shape)
        return maps[:, :, top : top + height, :width]

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """The output for images `x`, or for their first rows (the rest not yet drawn)."""
        maps = self.maps(labels, 0, *x.shape[2:])
        v, h = self.vertical(x), self.horizontal(x)
        for layer in self.layers:
            v, h = layer(v, h, labels, maps)
        return self.head(h)

    def head(self, h: Tensor) -> Tensor:
        out = self.out(F.elu(self.hidden(F.elu(h))))
        n, _, height, width = out.shape
        return out.view(n, self.channels, self.outputs, height, width).transpose(1, 2)

    def stack_rows(self, x: Tensor) -> list[Tensor]:
        """Each gated layer's vertical-stack input (N, features, H, W) for images like `x`,
        zero: `row_links` fills it in row by row."""
        n, _, height, width = x.shape
        return [x.new_zeros(n, layer.vertical.in_channels, height, width) for layer in self.layers]

    def row_links(
        self, x: Tensor, labels: Tensor | None, i: int, rows: Sequence[Tensor]
    ) -> list[Tensor]:
        """Each layer's link from the vertical stack plus its class terms (N, 2 features, W) at
        row `i` of `x` (N, C, H, W), drawn above it: what the horizontal stack adds there. The
        vertical stack's `rows` (`stack_rows`) must hold the rows above `i`; row `i` is filled
        in."""
        v, links = self.vertical.row(x, i), []
        maps = self.maps(labels, i, 1, x.shape[3])
        for layer, kept in zip(self.layers, rows, strict=True):
            kept[:, :, i] = v[:, :, 0]
            bias = layer.bias(labels, maps)
            v, link = layer.vertical_step(layer.vertical.row(kept, i), bias)
            links.append((link + bias)[:, :, 0])
        return links

    def column_inputs(self, links: Sequence[Tensor]) -> list[Tensor]:
        """Each gated layer's input along a row (N, features, padding + W), zero: the
        horizontal convolution's padding on the left, and the columns `column_output` fills."""
        n, width = len(links[0]), links[0].shape[-1]
        return [
            links[0].new_zeros(n, layer.horizontal.in_channels, layer.horizontal.pad[0] + width)
            for layer in self.layers
        ]

    def column_output(
        self, row: Tensor, links: Sequence[Tensor], inputs: Sequence[Tensor], j: int
    ) -> Tensor:
        """(N, outputs, C) at column `j` of `row` (N, C, W), an image row drawn up to there,
        given its `links` and the layers' `inputs` at the columns before (filled in at `j`)."""
        left = self.horizontal.pad[0]
        window = row[..., max(0, j - left) : j + 1]
        h = self.horizontal.column(F.pad(window, (left + 1 - window.shape[-1], 0)))
        for layer, link, cols in zip(self.layers, links, inputs, strict=True):
            left = layer.horizontal.pad[0]
            cols[..., left + j] = h
            h = layer.horizontal_column(cols[..., j : left + j + 1], link[..., j])
        out = self.out.column(F.elu(self.hidden.column(F.elu(h))))
        return out.view(len(out), self.channels, self.outputs).transpose(1, 2)


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
        super().__init__()
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
        shape = self.set_shape(channels * image_size * image_size, classes, channels, image_size)
        self.likelihood, self.grid_images = likelihood, grid_images
        self.sampler, self.label_dropout = sampler, label_dropout if classes else 0.0
        self.objective = ExactNLL() if objective is None else objective
        outputs = LEVELS if likelihood == "softmax" else 3 * mixtures
        self.network = network(
            outputs=outputs, num_classes=classes, null_label=bool(self.label_dropout), **shape
        )
        self.finish(init_from, freeze)

    def log_prob(self, out: Tensor, levels: Tensor) -> Tensor:
        """log p of each sub-pixel's value (N, C, H, W) from the network's output."""
        if self.likelihood == "softmax":
            return categorical_log_prob(out, levels)
        return logistic_mixture_log_prob(out, levels)

    def value_log_probs(self, out: Tensor) -> Tensor:
        """log p of all 256 values of one sub-pixel, (N, 256), from its output (N, outputs)."""
        if self.likelihood == "softmax":
            return F.log_softmax(out, dim=1)
        values = torch.arange(LEVELS, device=out.device).expand(len(out), LEVELS)
        return logistic_mixture_log_prob(out[:, :, None].expand(-1, -1, LEVELS), values)

    def nll(self, x: Tensor, labels: Tensor | None) -> Tensor:
        """-log p(x) in nats per image, for images in [-1, 1] (their 8-bit values)."""
        levels = to_levels(x)
        out = self.replicas.get("network", self.network)(from_levels(levels), labels)
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

    @torch.no_grad()
    def sample(
        self,
        z: Tensor,
        labels: Tensor | None = None,
        temperature: float = 1.0,
        start: Tensor | None = None,
        first_row: int = 0,
    ) -> Tensor:
        """Images in [-1, 1] for latents `z` (N, C*H*W), sub-pixel by sub-pixel from
        `first_row` (the rows above come from `start`). A sub-pixel takes the value where the
        CDF of its distribution (log-probabilities `guided` by the solver's guidance for a
        conditional model), raised to the power 1/`temperature` and renormalized, reaches
        Phi(z). The network's vertical stack runs once per row and its horizontal stack once
        per sub-pixel, at that pixel alone (`GatedPixelCNN.row_links`, `column_output`): exact,
        as its masks make the rest irrelevant."""
        if self.num_classes and labels is None:
            raise ValueError("a class-conditional PixelCNN needs labels to sample")
        guidance = self.sampler.guidance
        labels = guidance_labels(labels, self.num_classes, guidance)
        twice = labels is not None and len(labels) > len(z)

        def both(t: Tensor) -> Tensor:
            return torch.cat([t, t]) if twice else t

        c, s = self.shape["channels"], self.shape["image_size"]
        u = torch.special.ndtr(z.float()).view(len(z), c, s, s)
        x = torch.zeros_like(u) if start is None else start.float().clone()
        net = self.network
        bar = tqdm(total=(s - first_row) * s * c, desc="sub-pixels", leave=False, disable=None)
        with eval_mode(self), bar:
            rows = net.stack_rows(both(x))
            for i in range(s):
                links = net.row_links(both(x), labels, i, rows)
                if i < first_row:  # given: the vertical stack's rows only
                    continue
                inputs = net.column_inputs(links)
                for j in range(s):
                    for k in range(c):
                        out = net.column_output(both(x[:, :, i]), links, inputs, j)[:, :, k]
                        out = out.float()
                        log_p = self.value_log_probs(out)
                        if twice:
                            log_p = guided(*log_p.chunk(2), guidance)
                        cdf = torch.softmax(log_p / temperature, 1).cumsum(1)
                        level = torch.searchsorted(cdf, u[:, k, i, j, None].contiguous())
                        x[:, k, i, j] = from_levels(level[:, 0].clamp(max=LEVELS - 1))
                        bar.update()
        return x

    def _latents(self, n: int, generator: torch.Generator) -> Tensor:
        device = next(self.parameters()).device
        return torch.randn(n, self.latent_dim, device=device, generator=generator)

    @torch.no_grad()
    def generate(self, n: int, generator: torch.Generator, labels: Tensor | None = None) -> Tensor:
        """`n` images in [-1, 1] at temperature 1, their latents from `generator`."""
        return self.sample_at_temperature(n, generator, labels, 1.0)

    def sample_at_temperature(
        self,
        n: int,
        generator: torch.Generator,
        labels: Tensor | None,
        temperature: float,
    ) -> Tensor:
        """`temperature`: `generate` at another temperature (< 1: the likelier values)."""
        z = self._latents(n, generator)
        return self.sample(z, labels if self.num_classes else None, temperature)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """An exported PixelCNN samples: latents (and labels) to images."""
        return self.sample(z, labels)

    def sampling_protocol(self) -> dict[str, Any]:
        """The solver and its guidance."""
        return self.sampler.protocol()

    def fixed_inputs(self, num: int, examples: Batch, seed: int) -> dict[str, Tensor | None]:
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
        return {
            "z": z[:num],
            "labels": labels,
            "real": examples[0][:row],
            "real_z": z[num:],
            "real_labels": real_labels,
        }

    @torch.no_grad()
    def sample_grids(self, fixed: dict) -> dict[str, Tensor]:
        """The samples, and real images (upper row) above their completions from the middle
        row down (lower row)."""
        images = self.sample(fixed["z"], fixed["labels"])
        real = fixed["real"]
        done = self.complete(real, fixed["real_z"], fixed["real_labels"])
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
        self, mode: str, sampler: Any, generator: torch.Generator, real: Callable
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
                done = self.complete(x, self._latents(len(x), generator), labels, temperature)
                pairs = torch.stack([t.view(-1, nrow, *x.shape[1:]) for t in (x, done)], 1)
                yield pairs.flatten(0, 2).cpu()

        return rows(), nrow

    def export_sampler(self, node: DictConfig) -> Exported:
        """The model itself: its `forward` maps latents to images."""
        built = complete(node, **self.shape, num_classes=self.num_classes)
        built.update(init_from=None, freeze=[])
        built.pop("objective", None)  # it samples only
        return Exported(self, built, "image")

    # --- likelihood -----------------------------------------------------------------------------

    @torch.no_grad()
    def likelihood_metrics(self, images: Tensor, k: int, seed: int) -> dict[str, float]:
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
        return {"nll": nats, "nll_bits_per_dim": nats / (images[0].numel() * math.log(2))}

    def likelihood_protocol(self, k: int) -> dict[str, Any]:
        per_value = {"softmax": "softmax over 256 values", "logistic_mixture": "logistic mixture"}
        given = "; p(x) = mean over classes of p(x | y)" if self.num_classes else ""
        return {
            "likelihood": f"exact, of the 8-bit values ({per_value[self.likelihood]} per "
            f"sub-pixel; no dequantization{given})"
        }
