"""ResNet GAN networks (SNGAN: Miyato et al. 2018; the 32 px architecture mimicry and
StudioGAN reproduce), at any size the DCGAN layout allows: a base of 4 or 7 pixels doubled
`doublings` times (28 px: 7 -> 14 -> 28; 32 px: 4 -> 8 -> 16 -> 32; 64 px: 4 -> ... -> 64).

A conditional generator uses class-conditional BatchNorm (a scale and shift per class); a
conditional discriminator is a projection discriminator (Miyato & Koyama 2018): the logit plus
the inner product of a class embedding with the pooled features. Spectral normalization is the
family's switch (`model.spectral_norm`), not the networks'.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from genlab.errors import require_at_least
from genlab.models.common import Projection, join_labels, label_embedding
from genlab.models.dcgan import dcgan_layout


def _init(module: nn.Module) -> None:
    """SNGAN's: Xavier-uniform, gain sqrt(2) for the residual convolutions, 1 elsewhere."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            residual = isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
            gain = math.sqrt(2) if residual else 1.0
            nn.init.xavier_uniform_(m.weight, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ConditionalBatchNorm(nn.Module):
    """BatchNorm without its own affine, then a scale and shift for each image's class (1 and 0
    at the start); without classes, plain BatchNorm."""

    def __init__(self, features: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(features, affine=not num_classes)
        self.scale = self.shift = None
        if num_classes:
            self.scale = nn.Embedding(num_classes, features)
            self.shift = nn.Embedding(num_classes, features)
            nn.init.ones_(self.scale.weight)
            nn.init.zeros_(self.shift.weight)

    def forward(self, x: Tensor, labels: Tensor | None) -> Tensor:
        out = self.norm(x)
        if self.scale is None:
            return out
        return out * self.scale(labels)[:, :, None, None] + self.shift(labels)[:, :, None, None]


class GeneratorBlock(nn.Module):
    """BN, ReLU, 2x nearest upsampling, 3x3 conv, BN, ReLU, 3x3 conv; plus the upsampled input
    through a 1x1 conv."""

    def __init__(self, features: int, num_classes: int) -> None:
        super().__init__()
        self.norm1 = ConditionalBatchNorm(features, num_classes)
        self.conv1 = nn.Conv2d(features, features, 3, 1, 1)
        self.norm2 = ConditionalBatchNorm(features, num_classes)
        self.conv2 = nn.Conv2d(features, features, 3, 1, 1)
        self.shortcut = nn.Conv2d(features, features, 1)

    def forward(self, x: Tensor, labels: Tensor | None) -> Tensor:
        h = F.interpolate(F.relu(self.norm1(x, labels)), scale_factor=2.0)
        h = self.conv2(F.relu(self.norm2(self.conv1(h), labels)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2.0))


class DiscriminatorBlock(nn.Module):
    """ReLU, 3x3 conv, ReLU, 3x3 conv (and 2x average pooling when `down`); plus the input
    through a 1x1 conv (pooled alike). The first block (`first`) starts without the ReLU and
    pools its shortcut before the 1x1 conv, as SNGAN's optimized block."""

    def __init__(self, in_features: int, features: int, down: bool, first: bool = False) -> None:
        super().__init__()
        self.down, self.first = down, first
        self.conv1 = nn.Conv2d(in_features, features, 3, 1, 1)
        self.conv2 = nn.Conv2d(features, features, 3, 1, 1)
        self.shortcut = nn.Conv2d(in_features, features, 1)

    def _pool(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, 2) if self.down else x

    def forward(self, x: Tensor) -> Tensor:
        h = x if self.first else F.relu(x)
        h = self._pool(self.conv2(F.relu(self.conv1(h))))
        skip = self.shortcut(self._pool(x)) if self.first else self._pool(self.shortcut(x))
        return h + skip


class ResNetGenerator(nn.Module):
    """The latent to `features` maps of the base size, one upsampling block per doubling, then
    BN, ReLU, a 3x3 conv to the image channels and tanh. With classes and `embed_dim` > 0, a
    learned label embedding is also joined to the latent (as BigGAN's shared class embedding,
    and as `model=cdcgan` does), besides the conditional BatchNorm."""

    def __init__(
        self,
        latent_dim: int,
        channels: int,
        image_size: int,
        num_classes: int = 0,
        features: int = 128,
        embed_dim: int = 0,
    ) -> None:
        super().__init__()
        require_at_least(1, features=features)
        require_at_least(0, embed_dim=embed_dim)
        self.base, doublings = dcgan_layout(image_size, "The ResNet generator")
        self.features = features
        self.embed = label_embedding(num_classes, embed_dim) if embed_dim else None
        inputs = latent_dim + (embed_dim if self.embed is not None else 0)
        self.input = nn.Linear(inputs, features * self.base * self.base)
        self.blocks = nn.ModuleList(GeneratorBlock(features, num_classes) for _ in range(doublings))
        self.norm = nn.BatchNorm2d(features)
        self.output = nn.Conv2d(features, channels, 3, 1, 1)
        _init(self)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        h = self.input(join_labels(z, self.embed, labels))
        h = h.view(len(z), self.features, self.base, self.base)
        for block in self.blocks:
            h = block(h, labels)
        return self.output(F.relu(self.norm(h))).tanh()


class ResNetDiscriminator(nn.Module):
    """One downsampling block per doubling (the first SNGAN's optimized one), two more at the
    base size, ReLU, a sum over positions and a linear logit; with classes, plus the projection
    <embed(y), features>."""

    def __init__(
        self, channels: int, image_size: int, num_classes: int = 0, features: int = 128
    ) -> None:
        super().__init__()
        require_at_least(1, features=features)
        _, doublings = dcgan_layout(image_size, "The ResNet discriminator")
        blocks = [DiscriminatorBlock(channels, features, down=True, first=True)]
        blocks += [DiscriminatorBlock(features, features, down=True) for _ in range(doublings - 1)]
        blocks += [DiscriminatorBlock(features, features, down=False) for _ in range(2)]
        self.blocks = nn.Sequential(*blocks)
        self.output = nn.Linear(features, 1)
        self.projection = Projection(num_classes, features) if num_classes else None
        _init(self)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        h = F.relu(self.blocks(x)).sum(dim=(2, 3))
        out = self.output(h).squeeze(1)
        if self.projection is not None:
            out = out + self.projection(h, labels)
        return out
