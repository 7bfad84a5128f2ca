"""The Gated PixelCNN network (van den Oord et al. 2016): an output per sub-pixel that sees only the
sub-pixels before it in raster order (R, G, B within a pixel); `genlab.models.pixelcnn` is the
family that trains and samples it.

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
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.errors import require_at_least


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
