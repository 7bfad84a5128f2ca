"""Helpers shared by the networks and the model families."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from math import gcd

import torch
from torch import Tensor, nn

from genlab.errors import require_at_least
from genlab.images import square_side


def dcgan_init(module: nn.Module) -> None:
    """Radford et al.: conv and linear weights ~ N(0, 0.02), norm scales ~ N(1, 0.02), biases 0."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d | nn.GroupNorm):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def label_embedding(num_classes: int, embed_dim: int) -> nn.Embedding | None:
    """A learned embedding of the class labels; None for an unconditional network."""
    return nn.Embedding(num_classes, embed_dim) if num_classes > 0 else None


def join_labels(x: Tensor, embed: nn.Embedding | None, labels: Tensor | None) -> Tensor:
    """`x` (N, F) with each label's embedding appended (N, F + embed_dim); unconditional: `x`."""
    if embed is None:
        return x
    if labels is None:
        raise ValueError("this network is class-conditional: pass labels")
    return torch.cat([x, embed(labels)], dim=1)


class Projection(nn.Linear):
    """The class term of a projection discriminator (Miyato & Koyama 2018): <embed(y), h> for
    pooled features h (N, features). The embedding is this bias-free linear map of one-hot labels
    (its `weight` column c is class c's), so that spectral normalization covers it with the
    discriminator's other weights, as in SNGAN's code (chainer's SNEmbedID)."""

    def __init__(self, num_classes: int, features: int) -> None:
        super().__init__(num_classes, features, bias=False)

    def forward(self, h: Tensor, labels: Tensor | None) -> Tensor:
        if labels is None:
            raise ValueError("this network is class-conditional: pass labels")
        one_hot = torch.nn.functional.one_hot(labels, self.in_features).to(h.dtype)
        return (super().forward(one_hot).to(h.dtype) * h).sum(1)


class MinibatchStd(nn.Module):
    """Karras et al. 2018 (ProGAN), as in StyleGAN2: one more feature map holding the standard
    deviation of the features across groups of `group_size` images (fewer when the batch does not
    divide by it), averaged over channels and positions. A discriminator that sees it can tell a
    batch with too little variety from a real one, which counters mode dropping."""

    def __init__(self, group_size: int = 4) -> None:
        super().__init__()
        require_at_least(1, minibatch_std=group_size)
        self.group_size = group_size

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        group = gcd(self.group_size, n)
        y = x.float().reshape(group, n // group, c, h, w)
        centred = y - y.mean(dim=0)  # not y.var(dim=0): 5x slower on the CPU over this dim
        std = (centred.square().mean(dim=0) + 1e-8).sqrt().mean(dim=(1, 2, 3))
        std = std.to(x.dtype).reshape(1, n // group, 1, 1, 1).expand(group, -1, 1, h, w)
        return torch.cat([x, std.reshape(n, 1, h, w)], dim=1)


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Evaluation mode (BatchNorm running statistics) for the block, then back as it was."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def class_rows(num_classes: int, num: int, device: torch.device) -> Tensor | None:
    """Labels for a grid of about `num` images with one row per class (None: unconditional)."""
    if not num_classes:
        return None
    per_class = max(1, num // num_classes)
    return torch.arange(num_classes, device=device).repeat_interleave(per_class)


def row_length(num: int, num_classes: int) -> int:
    """Images per grid row: a class's images for a conditional model, else a square's side."""
    return num // num_classes if num_classes else square_side(num)


def conditional_classes(conditional: bool, num_classes: int | None, family: str) -> int:
    """The classes a model is conditioned on: the data set's with `conditional`, else 0;
    refusing `conditional` on a data set without labels."""
    if conditional and not num_classes:
        raise ValueError(
            f"a class-conditional {family} needs class labels, and this data set has none "
            "(for image_folder, put the images in one sub-folder per class)"
        )
    return num_classes if conditional else 0


# --- classifier-free guidance (diffusion, PixelCNN) ---------------------------------------------


def guided(conditional: Tensor, unconditional: Tensor, guidance: float) -> Tensor:
    """Classifier-free guidance (Ho & Salimans 2022): unconditional + guidance * (conditional -
    unconditional); 1 gives the conditional output, 0 the unconditional one."""
    return unconditional + guidance * (conditional - unconditional)


def guidance_labels(labels: Tensor | None, null: int, guidance: float) -> Tensor | None:
    """The labels a conditional network sees for classifier-free guidance scale `guidance`:
    `labels` at 1 (and None for an unconditional model), the null label `null` at 0, otherwise
    `labels` then the null label in one batch of twice the size (split it and apply `guided`)."""
    if labels is None or guidance == 1:
        return labels
    nulls = torch.full_like(labels, null)
    return nulls if guidance == 0 else torch.cat([labels, nulls])


def check_guidance(guidance: float) -> float:
    require_at_least(0, guidance=guidance)
    return float(guidance)
