"""Cascades: a generator's images made larger by a model that generates from a low-resolution
image (`genlab sample run=GENERATOR upscaler=SR_RUN`, `genlab eval run=GENERATOR
upscaler=SR_RUN`), as cascaded diffusion models do (Ho et al. 2022): the generator learns the
image at a small size, the upscaler its detail. genlab measures the pair like any generator.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

from genlab.data.degrade import quantize
from genlab.errors import ConfigError
from genlab.loading import load_run
from genlab.models.base import Condition, Family


class Cascade:
    """`generator` then `upscaler`: what `genlab eval` and `sample` ask of a model that generates
    (`generate`, `num_classes`, `condition`, `shape`, `sampling_protocol`), with the generator's
    condition and the upscaler's image shape. The generator's images, rounded to 8 bits (the
    upscaler's conditions were), are the upscaler's conditions."""

    abilities: frozenset[str] = frozenset()  # no latents to interpolate, no likelihood
    sample_modes: frozenset[str] = frozenset()

    def __init__(self, generator: Family, upscaler: Family, source: str = "") -> None:
        made = (generator.shape["channels"], *[generator.shape["image_size"]] * 2)
        if generator.condition.kind == "image":
            raise ValueError(
                "the generator of a cascade generates from nothing or labels; run= names a model "
                "that generates from images"
            )
        if upscaler.condition.kind != "image" or upscaler.condition.shape != made:
            wants = upscaler.condition.describe()
            raise ValueError(
                f"upscaler= generates from {wants}, and the generator makes images of shape "
                f"{'x'.join(map(str, made))}: train the upscaler with condition=lowres on "
                "images whose low resolution is the generator's size (condition.scale)"
            )
        self.generator, self.upscaler = generator, upscaler
        self.num_classes, self.condition = generator.num_classes, generator.condition
        self.shape, self.latent_dim = upscaler.shape, generator.latent_dim
        self.source = source  # the upscaler's checkpoint, for the protocol

    @torch.no_grad()
    def generate(self, n: int, gen: torch.Generator, condition: Condition = None) -> Tensor:
        """`n` images at the upscaler's size: the generator's (of classes `condition`), each
        made `scale` times larger; both draw from `gen`."""
        small = quantize(self.generator.generate(n, gen, condition))
        return self.upscaler.generate(n, gen, small)

    def sampling_protocol(self) -> dict[str, Any]:
        """Both models' sampling, the upscaler's keys prefixed `upscaler_`, and which upscaler."""
        theirs = {f"upscaler_{k}": v for k, v in self.upscaler.sampling_protocol().items()}
        scale = self.shape["image_size"] // self.generator.shape["image_size"]
        ours = {"cascade": f"x{scale}", "upscaler": self.source}
        return {**self.generator.sampling_protocol(), **ours, **theirs}


def upscaled(
    generator: Family, upscaler: str, device: torch.device, trust_code: bool = False
) -> tuple[Cascade, DictConfig]:
    """The cascade of `generator` and the run or checkpoint `upscaler` (`upscaler=` of eval and
    sample), and the upscaler's run config (its data set is what the cascade is measured
    against); one message where they do not fit."""
    model, cfg, state = load_run(upscaler, device, trust_code)
    try:
        return Cascade(generator, model, state["path"]), cfg
    except ValueError as e:
        raise ConfigError(f"{e} ({upscaler})") from None
