"""Weight initialisation shared by the networks."""

from torch import nn


def dcgan_init(module: nn.Module) -> None:
    """Radford et al.: conv and linear weights ~ N(0, 0.02), norm scales ~ N(1, 0.02), biases 0."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d | nn.GroupNorm):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
