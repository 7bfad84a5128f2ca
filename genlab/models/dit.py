"""The diffusion family's transformer backbone: a Diffusion Transformer (Peebles & Xie 2023) in
plain torch. The image is cut into patches, each a token with a fixed 2-D sine-cosine position;
ViT blocks are conditioned on the timestep (and class) through adaLN-Zero; a last layer maps
each token back to its patch. Two options of U-ViT (Bao et al. 2023), off by default: long skips
from the first half of the blocks to the second, and a 3x3 convolution over the reassembled image,
which smooths the seams between patches."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embeddings of (possibly fractional) timesteps: cos then sin of t at `dim // 2`
    geometric frequencies from 1 to 1/max_period."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def sincos_positions(dim: int, side: int) -> Tensor:
    """Fixed 2-D sine-cosine position embeddings of a side x side grid of tokens: half the
    channels encode the row, half the column (MAE's and DiT's)."""
    if dim % 4:
        raise ValueError(f"width must be divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")

    def encode(pos: Tensor) -> Tensor:
        out = pos.flatten().double()[:, None] * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    return torch.cat([encode(cols), encode(rows)], dim=1).float()


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class Block(nn.Module):
    """Self-attention and an MLP, each after a LayerNorm whose shift and scale, and a gate on
    its residual, come from the conditioning (zero at the start: the block is the identity)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width)
        )
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def attention(self, x: Tensor) -> Tensor:
        n, tokens, width = x.shape
        q, k, v = self.qkv(x).view(n, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, tokens, width))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c).chunk(6, dim=1)
        x = x + gate1[:, None] * self.attention(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class DiT(nn.Module):
    """`depth` blocks of `width` channels and `heads` heads over `patch` x `patch` patches (the
    image size must be divisible by `patch`). A class-conditional DiT embeds `num_classes`
    labels plus the null label `num_classes` of classifier-free guidance. `long_skips`: block
    `depth - 1 - i` of the second half also takes block i's input (concatenated, then a linear
    layer back to `width`), as U-ViT; `final_conv`: a 3x3 convolution on the output image."""

    def __init__(
        self,
        channels: int,
        image_size: int,
        num_classes: int = 0,
        patch: int = 4,
        width: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        long_skips: bool = False,
        final_conv: bool = False,
        condition_channels: int = 0,  # an image condition's, concatenated to the noisy image
    ) -> None:
        super().__init__()
        if patch < 1 or image_size % patch:
            raise ValueError(
                f"patch must divide the image size {image_size}, got {patch} "
                "(set model.network.patch)"
            )
        if depth < 1 or heads < 1 or width % heads:
            raise ValueError(
                f"depth and heads must be >= 1 and width divisible by heads, got depth={depth}, "
                f"width={width}, heads={heads}"
            )
        self.channels, self.patch, self.side = channels, patch, image_size // patch
        self.embed = nn.Conv2d(channels + condition_channels, width, patch, stride=patch)
        self.register_buffer("positions", sincos_positions(width, self.side), persistent=False)
        self.time = nn.Sequential(nn.Linear(256, width), nn.SiLU(), nn.Linear(width, width))
        self.classes = nn.Embedding(num_classes + 1, width) if num_classes else None
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio) for _ in range(depth))
        skips = depth // 2 if long_skips else 0
        self.skips = nn.ModuleList(nn.Linear(2 * width, width) for _ in range(skips))
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.out = nn.Linear(width, patch * patch * channels)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if final_conv else None
        self._init()

    def _init(self) -> None:
        """DiT's: Xavier-uniform linear layers, N(0, 0.02) time and class embeddings, and zeros
        for every modulation and the output layer (adaLN-Zero)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.embed.weight.view(len(self.embed.weight), -1))
        nn.init.zeros_(self.embed.bias)
        for layer in (self.time[0], self.time[2]):
            nn.init.normal_(layer.weight, std=0.02)
        if self.classes is not None:
            nn.init.normal_(self.classes.weight, std=0.02)
        for m in [*(b.modulation[1] for b in self.blocks), self.final_modulation[1], self.out]:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2) + self.positions
        c = self.time(timestep_embedding(t, 256).to(tokens.dtype))
        if self.classes is not None:
            c = c + self.classes(labels)
        saved, first_out = [], len(self.blocks) - len(self.skips)
        for i, block in enumerate(self.blocks):
            if i < len(self.skips):
                saved.append(tokens)
            elif i >= first_out:
                tokens = self.skips[i - first_out](torch.cat([tokens, saved.pop()], dim=2))
            tokens = block(tokens, c)
        shift, scale = self.final_modulation(c).chunk(2, dim=1)
        patches = self.out(modulate(self.norm(tokens), shift, scale))
        n, p, s = len(x), self.patch, self.side
        patches = patches.view(n, s, s, p, p, self.channels)
        out = torch.einsum("nhwpqc->nchpwq", patches).reshape(n, self.channels, s * p, s * p)
        return out if self.conv is None else self.conv(out)
