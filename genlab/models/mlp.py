"""Fully connected networks on flattened images: a GAN's generator and discriminator, optionally
class-conditional, and a VAE's encoder and decoder.

With `num_classes > 0` a learned label embedding is joined to the noise in the generator and to
the flattened image in the discriminator (Mirza & Osindero's conditional GAN).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from torch import Tensor, nn

from genlab.models.common import join_labels, label_embedding


def _check_hidden(hidden: Sequence[int]) -> None:
    if not hidden or min(hidden) < 1:
        raise ValueError(f"hidden must be a non-empty list of positive sizes, got {hidden}")


class MLPGenerator(nn.Module):
    """Noise (and label embedding) through hidden layers, BatchNorm after all but the first."""

    def __init__(
        self,
        latent_dim: int,
        channels: int,
        image_size: int,
        num_classes: int = 0,
        hidden: Sequence[int] = (256, 512, 1024),
        embed_dim: int = 10,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        _check_hidden(hidden)
        self.shape = (channels, image_size, image_size)
        self.embed = label_embedding(num_classes, embed_dim)
        layers: list[nn.Module] = []
        width = latent_dim + (embed_dim if self.embed else 0)
        for i, size in enumerate(hidden):
            layers.append(nn.Linear(width, size))
            if batch_norm and i > 0:  # as in DCGAN, not on the layer that reads the noise
                layers.append(nn.BatchNorm1d(size))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            width = size
        layers += [nn.Linear(width, channels * image_size * image_size), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.net(join_labels(z, self.embed, labels)).view(-1, *self.shape)


class MLPDiscriminator(nn.Module):
    def __init__(
        self,
        channels: int,
        image_size: int,
        num_classes: int = 0,
        hidden: Sequence[int] = (512, 256),
        embed_dim: int = 10,
    ) -> None:
        super().__init__()
        _check_hidden(hidden)
        self.embed = label_embedding(num_classes, embed_dim)
        layers: list[nn.Module] = []
        width = channels * image_size * image_size + (embed_dim if self.embed else 0)
        for size in hidden:
            layers += [nn.Linear(width, size), nn.LeakyReLU(0.2, inplace=True)]
            width = size
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Logits, one per image."""
        return self.net(join_labels(x.flatten(1), self.embed, labels)).squeeze(1)


def _relu_layers(width: int, hidden: Sequence[int]) -> list[nn.Module]:
    """Linear layers from `width` through the `hidden` sizes, each followed by a ReLU."""
    _check_hidden(hidden)
    sizes = [width, *hidden]
    return [m for a, b in pairwise(sizes) for m in (nn.Linear(a, b), nn.ReLU(True))]


class MLPEncoder(nn.Sequential):
    """A VAE's encoder: the flattened image through ReLU layers (`hidden`, from the image side) to
    the latent mean and log-variance, as in Kingma & Welling and PyTorch's VAE example."""

    def __init__(
        self, channels: int, image_size: int, latent_dim: int, hidden: Sequence[int] = (400,)
    ) -> None:
        super().__init__(
            nn.Flatten(),
            *_relu_layers(channels * image_size * image_size, hidden),
            nn.Linear(hidden[-1], 2 * latent_dim),
        )


class MLPDecoder(nn.Sequential):
    """A VAE's decoder: the latent through ReLU layers (`hidden`, from the latent side) to one
    output per pixel, shaped as the image."""

    def __init__(
        self, channels: int, image_size: int, latent_dim: int, hidden: Sequence[int] = (400,)
    ) -> None:
        super().__init__(
            *_relu_layers(latent_dim, hidden),
            nn.Linear(hidden[-1], channels * image_size * image_size),
            nn.Unflatten(1, (channels, image_size, image_size)),
        )
