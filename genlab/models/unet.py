"""The diffusion family's U-Net backbone: diffusers' `UNet2DModel`, built from config with random
weights (nothing is downloaded)."""

from __future__ import annotations

from collections.abc import Sequence

from diffusers import UNet2DModel
from torch import Tensor, nn

from genlab.errors import require_at_least


class UNet(nn.Module):
    """A U-Net with one level per entry of `channels` (each level but the last halves the
    image), `layers` residual blocks per level, self-attention at the levels where `attention`
    is true (and in the middle block), GroupNorm over `groups` groups. A class-conditional one
    embeds `num_classes` labels plus the null label `num_classes` of classifier-free guidance,
    added to the timestep embedding. `condition_channels`: an image condition's, concatenated to
    the noisy image (SR3, Saharia et al. 2021)."""

    def __init__(
        self,
        channels: int,
        image_size: int,
        num_classes: int = 0,
        features: Sequence[int] = (16, 32, 64),
        layers: int = 1,
        attention: Sequence[bool] = (False, False, True),
        groups: int = 8,
        dropout: float = 0.0,
        condition_channels: int = 0,
    ) -> None:
        super().__init__()
        features, attention = list(features), list(attention)
        require_at_least(1, layers=layers, groups=groups, **{"features": min(features, default=1)})
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if not features or len(attention) != len(features):
            raise ValueError(
                f"features and attention need one entry per level, got {len(features)} and "
                f"{len(attention)}"
            )
        if any(f % groups for f in features):
            raise ValueError(f"every entry of features must be divisible by groups={groups}")
        if image_size % 2 ** (len(features) - 1):
            raise ValueError(
                f"a U-Net with {len(features)} levels needs an image size divisible by "
                f"{2 ** (len(features) - 1)}, got {image_size}"
            )
        self.unet = UNet2DModel(
            sample_size=image_size,
            in_channels=channels + condition_channels,
            out_channels=channels,
            block_out_channels=tuple(features),
            layers_per_block=layers,
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
            up_block_types=tuple(
                "AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)
            ),
            norm_num_groups=groups,
            attention_head_dim=min(features),
            dropout=dropout,
            num_class_embeds=num_classes + 1 if num_classes else None,
        )

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.unet(x, t, class_labels=labels).sample
