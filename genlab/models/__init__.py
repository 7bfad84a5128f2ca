"""Model families (GAN, VAE) and the networks they are built from."""

from genlab.models.gan import GAN
from genlab.models.vae import VAE

__all__ = ["GAN", "VAE"]
