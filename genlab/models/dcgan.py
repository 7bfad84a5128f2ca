"""DCGAN networks (Radford et al. 2016): transposed-conv generator, strided-conv discriminator."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from genlab.errors import require_at_least
from genlab.models.common import (
    MinibatchStd,
    Projection,
    dcgan_init,
    join_labels,
    label_embedding,
)


def dcgan_layout(image_size: int, name: str = "DCGAN") -> tuple[int, int]:
    """(base, doublings) with base * 2**doublings == image_size, base 4 or 7, doublings >= 2;
    else a ValueError naming the networks (`name`)."""
    base, doublings = image_size, 0
    while base % 2 == 0 and base > 7:
        base, doublings = base // 2, doublings + 1
    if base not in (4, 7) or doublings < 2:
        raise ValueError(
            f"{name} cannot work at image_size={image_size}; allowed sizes are 4 or 7 times a "
            "power of two, at least 4x: 16, 28, 32, 56, 64, 112, 128, ... "
            "(set dataset.image_size)"
        )
    return base, doublings


class DCGANGenerator(nn.Module):
    """Transposed convolutions from the noise to an image; with classes, a learned label
    embedding of `embed_dim` values is joined to the noise (the conditional DCGAN)."""

    def __init__(
        self,
        latent_dim: int,
        channels: int,
        image_size: int,
        num_classes: int = 0,
        features: int = 64,
        embed_dim: int = 10,
    ) -> None:
        super().__init__()
        require_at_least(1, features=features, embed_dim=embed_dim)
        base, doublings = dcgan_layout(image_size)
        width = features * 2 ** (doublings - 1)
        self.embed = label_embedding(num_classes, embed_dim)
        inputs = latent_dim + (embed_dim if num_classes else 0)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(inputs, width, base, 1, 0, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(True),
        ]
        for _ in range(doublings - 1):
            layers += [
                nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(width // 2),
                nn.ReLU(True),
            ]
            width //= 2
        layers += [nn.ConvTranspose2d(width, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(dcgan_init)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.net(join_labels(z, self.embed, labels)[:, :, None, None])


class DCGANDiscriminator(nn.Module):
    """Strided convolutions to one logit per image; with classes, the projection discriminator
    (`Projection`): plus <embed(y), the last features summed over positions>.

    `norm` is BatchNorm as in the paper; use `layer` or `none` with a gradient penalty (WGAN-GP),
    whose per-sample gradients BatchNorm mixes across the batch. `minibatch_std` > 0 adds the
    features' standard deviation over groups of that many images before the last convolution
    (`MinibatchStd`); 0 leaves the paper's network.
    """

    def __init__(
        self,
        channels: int,
        image_size: int,
        num_classes: int = 0,
        features: int = 64,
        norm: Literal["batch", "layer", "none"] = "batch",
        minibatch_std: int = 0,
    ) -> None:
        super().__init__()
        require_at_least(1, features=features)
        require_at_least(0, minibatch_std=minibatch_std)
        norms = {"batch": nn.BatchNorm2d, "layer": lambda c: nn.GroupNorm(1, c), "none": None}
        if norm not in norms:
            raise ValueError(f"norm must be one of {', '.join(norms)}, got {norm!r}")
        make_norm = norms[norm]
        base, doublings = dcgan_layout(image_size)
        width = features
        layers: list[nn.Module] = [
            nn.Conv2d(channels, width, 4, 2, 1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        for _ in range(doublings - 1):
            layers.append(nn.Conv2d(width, width * 2, 4, 2, 1, bias=make_norm is None))
            if make_norm is not None:
                layers.append(make_norm(width * 2))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            width *= 2
        if minibatch_std:
            layers.append(MinibatchStd(minibatch_std))
        width += bool(minibatch_std)
        layers.append(nn.Conv2d(width, 1, base, 1, 0))
        self.net = nn.Sequential(*layers)
        self.projection = Projection(num_classes, width) if num_classes else None
        self.apply(dcgan_init)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.projection is None:
            return self.net(x).flatten()
        h = self.net[:-1](x)
        return self.net[-1](h).flatten() + self.projection(h.sum(dim=(2, 3)), labels)
