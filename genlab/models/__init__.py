"""Model families (`base.Family`: the contract; GAN, VAE, diffusion, PixelCNN) and the networks
they are built from."""

from genlab.models.base import Family
from genlab.models.diffusion import Diffusion
from genlab.models.gan import GAN
from genlab.models.pixelcnn import PixelCNN
from genlab.models.vae import VAE

__all__ = ["Diffusion", "Family", "GAN", "PixelCNN", "VAE"]
