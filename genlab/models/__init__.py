"""Model families (`base.Family`: the contract; GAN, VAE, diffusion, PixelCNN) and the networks
they are built from.

`Diffusion` is imported when first asked for (`genlab.models.Diffusion`, as `model=ddpm` names
it): it brings in diffusers, whose import takes seconds, which no other family needs.
"""

from typing import Any

from genlab.models.base import Family
from genlab.models.gan import GAN
from genlab.models.pixelcnn import PixelCNN
from genlab.models.vae import VAE

__all__ = ["Diffusion", "Family", "GAN", "PixelCNN", "VAE"]


def __getattr__(name: str) -> Any:
    if name == "Diffusion":
        from genlab.models.diffusion import Diffusion

        return Diffusion
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
