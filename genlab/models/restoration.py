"""The restoration family: an image made from its image condition (a low-resolution, noisy, grey
or masked version that a degradation of the `condition` group makes) by one network in one
pass, trained by a pixel loss. It draws nothing (`latent_dim` 0): the same condition always
gives the same image.

Its networks are the classic super-resolution CNNs, for any scale (the image's side over the
condition's: 1 for the degradations that keep the size) and any channel counts:

- `SRCNN` (Dong et al. 2014, "Image Super-Resolution Using Deep Convolutional Networks"):
  patch extraction, non-linear mapping and reconstruction (9-1-5 kernels, 64 and 32 features,
  ReLU) on the condition enlarged bicubically to the image's size;
- `ESPCN` (Shi et al. 2016, "Real-Time Single Image and Video Super-Resolution Using an
  Efficient Sub-Pixel Convolutional Neural Network"): the same three stages at the condition's
  own resolution (5-3-3, tanh), the last one making scale^2 values per pixel that a sub-pixel
  shuffle arranges into the image, so every convolution runs on scale^2 fewer pixels.

Both add their output to the bicubically enlarged condition by default (`residual`, VDSR's
global residual, Kim et al. 2016), with the last convolution starting at zero: a network starts
as bicubic interpolation and learns the detail it lacks. `residual: false` is the papers' form.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import ClassVar

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from genlab.images import as_image, enlarged, paired_count, paired_grid
from genlab.losses import PixelLoss
from genlab.models.base import Condition, Exported, GridInputs, OneNetwork, standalone_node
from genlab.models.common import eval_mode
from genlab.optim import Updater


def _stages(
    channels: Sequence[int], kernels: Sequence[int], act: Callable[[], nn.Module]
) -> nn.Sequential:
    """Convolutions from channels[i] to channels[i + 1] ('same' padding), `act` between them."""
    layers: list[nn.Module] = []
    for i, k in enumerate(kernels):
        layers += [nn.Conv2d(channels[i], channels[i + 1], k, padding=k // 2)]
        layers += [act()] if i < len(kernels) - 1 else []
    return nn.Sequential(*layers)


class _Upscaler(nn.Module):
    """What SRCNN and ESPCN share: shapes, convolutions of `widths` and `kernels` with `act`
    between them, the residual to the enlarged condition with the last convolution started at
    zero. `forward(z, condition)`: `z` is None (nothing is drawn)."""

    def __init__(
        self,
        channels: int,
        condition_channels: int,
        scale: int,
        widths: Sequence[int],
        kernels: Sequence[int],
        act: Callable[[], nn.Module],
        residual: bool,
    ) -> None:
        super().__init__()
        if scale < 1:
            raise ValueError(
                f"scale must be >= 1 (the image's side over its condition's), got {scale}"
            )
        if len(kernels) != len(widths) - 1:
            raise ValueError(
                f"kernels needs one more entry than features (a last convolution to the image): "
                f"got {len(kernels)} kernels for {len(widths) - 2} features"
            )
        self.channels, self.scale, self.residual = channels, scale, residual
        self.condition_channels = condition_channels
        self.body = _stages(widths, kernels, act)
        if residual:
            nn.init.zeros_(self.body[-1].weight)
            nn.init.zeros_(self.body[-1].bias)

    def base(self, enlarged_condition: Tensor) -> Tensor | float:
        """What the network's output is added to: the enlarged condition as an image, or 0."""
        return as_image(enlarged_condition, self.channels) if self.residual else 0.0


class SRCNN(_Upscaler):
    """Dong et al. 2014 on the bicubically enlarged condition; `features` (64, 32) and
    `kernels` (9, 1, 5) are the paper's base network (9-5-5 and wider ones are its variants).
    Padded to keep the image's size (the paper trains unpadded convolutions on 33 px crops)."""

    def __init__(
        self,
        channels: int,
        condition_channels: int,
        scale: int,
        features: Sequence[int] = (64, 32),
        kernels: Sequence[int] = (9, 1, 5),
        residual: bool = True,
    ) -> None:
        widths = [condition_channels, *features, channels]
        super().__init__(channels, condition_channels, scale, widths, kernels, nn.ReLU, residual)

    def forward(self, z: Tensor | None, condition: Tensor) -> Tensor:
        x = enlarged(condition, self.scale)
        return self.body(x) + self.base(x)


class ESPCN(_Upscaler):
    """Shi et al. 2016: convolutions at the condition's resolution (`features` (64, 32),
    `kernels` (5, 3, 3), tanh), the last to channels x scale^2 maps, then `nn.PixelShuffle`."""

    def __init__(
        self,
        channels: int,
        condition_channels: int,
        scale: int,
        features: Sequence[int] = (64, 32),
        kernels: Sequence[int] = (5, 3, 3),
        residual: bool = True,
    ) -> None:
        widths = [condition_channels, *features, channels * scale**2]
        super().__init__(channels, condition_channels, scale, widths, kernels, nn.Tanh, residual)
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, z: Tensor | None, condition: Tensor) -> Tensor:
        base = self.base(enlarged(condition, self.scale)) if self.residual else 0.0
        return self.shuffle(self.body(condition)) + base


class Restoration(OneNetwork):
    """Generates from an image only, in one deterministic pass of `network` (SRCNN, ESPCN, or a
    network of your own taking `channels`, `condition_channels`, `scale`), trained by
    `objective` (the `pixel` loss: mean squared or absolute error)."""

    roles: ClassVar[dict[str, str]] = {"model": "network"}
    conditions: ClassVar[frozenset[str]] = frozenset({"image"})

    def __init__(
        self,
        network: Callable[..., nn.Module],
        objective: PixelLoss,
        channels: int,
        image_size: int,
        condition_shape: Sequence[int] | None = None,
        num_classes: int | None = None,  # the data set's; a restoration model takes none
        init_from: str | None = None,
        freeze: Sequence[str] = (),
    ) -> None:
        super().__init__(0, 0, channels, image_size, condition_shape)
        c, h, _ = self.condition.shape  # type: ignore[misc]
        self.objective, self.scale = objective, image_size // h
        self.network = network(channels=channels, condition_channels=c, scale=self.scale)
        self.finish(init_from, freeze)

    def train_step(
        self, batches: Iterator, update: Updater, metrics: bool = True
    ) -> dict[str, Tensor]:
        images, condition = next(batches)  # targets and the conditions the degradation made
        with update.autocast():
            restored = self.trained("network")(None, condition)
        loss = self.objective(restored.float(), images)
        update(loss, "model", measure=metrics)
        return {f"loss/{self.objective.kind}": loss.detach()}

    def fixed_inputs(self, num: int, examples: tuple, seed: int) -> GridInputs:
        images, condition = examples
        n = paired_count(num, len(images))
        return GridInputs(images.new_zeros(n, 0), condition[:n], real=images[:n])

    @torch.no_grad()
    def sample_grids(self, fixed: GridInputs) -> dict[str, Tensor]:
        """Rows of conditions (their pixels), what the network makes of them, and the images."""
        made = self.generate(len(fixed.real), torch.Generator(), fixed.condition)
        return {"samples": paired_grid(fixed.condition, made, fixed.real)}

    @torch.no_grad()
    def generate(self, n: int, gen: torch.Generator, condition: Condition = None) -> Tensor:
        if condition is None:
            raise ValueError(f"{type(self).__name__} generates from images: pass their conditions")
        with eval_mode(self):
            return self.network(None, condition).clamp(-1, 1)

    def export_sampler(self, node: DictConfig) -> Exported:
        c = self.condition.shape[0]  # type: ignore[index]
        built = standalone_node(node.network, channels=self.shape["channels"])
        return Exported(
            self.network, {**built, "condition_channels": c, "scale": self.scale}, "clamp"
        )
