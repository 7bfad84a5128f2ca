"""genlab: a Hydra-configured experiment runner for image generative models."""

__version__ = "0.1.0"
