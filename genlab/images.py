"""Sample grids: from generated images in [-1, 1] to a grid tensor and a PNG file."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from torch import Tensor

MARK = ("Software", "genlab")  # a text chunk in every PNG genlab writes


def square_side(n: int) -> int:
    """Images per row for a near-square grid of n images."""
    return max(1, round(n**0.5))


def to_grid(images: Tensor, nrow: int) -> Tensor:
    """A (C, H, W) grid in [0, 1] with the images' channels (1 or 3), `nrow` images per row, 2
    pixels of black padding around each, blank cells after the last image: torchvision's
    `make_grid(images, nrow, padding=2, normalize=True, value_range=(-1, 1))` (a test compares
    them; one image is padded too), written here because importing torchvision takes about 2 s
    of every command's start."""
    x = images.detach().float().cpu().clamp(-1, 1).add(1).div(2)
    n, c, h, w = x.shape
    cols = min(nrow, n)
    rows = -(-n // cols)
    cells = torch.zeros(rows * cols, c, h + 2, w + 2)
    cells[:n, :, 2:, 2:] = x
    grid = cells.view(rows, cols, c, h + 2, w + 2).permute(2, 0, 3, 1, 4)
    grid = grid.reshape(c, rows * (h + 2), cols * (w + 2))
    return torch.nn.functional.pad(grid, (0, 2, 0, 2))


def png_bytes(grid: Tensor) -> bytes:
    """A (C, H, W) float grid in [0, 1] as an 8-bit PNG, grey for one channel (fast zlib level:
    sample grids are written while training), marked as genlab's (`written_by_genlab`)."""
    array = grid.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    info = PngInfo()
    info.add_text(*MARK)
    Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(
        buffer, format="PNG", compress_level=1, pnginfo=info
    )
    return buffer.getvalue()


def written_by_genlab(path: Path) -> bool:
    """Whether `path` is a PNG that genlab wrote (its text chunk says so; the pixels are not
    decoded)."""
    try:
        with Image.open(path) as im:
            return im.format == "PNG" and im.info.get(MARK[0]) == MARK[1]
    except Exception:  # not an image, unreadable, a decompression bomb: not ours
        return False


def as_image(condition: Tensor, channels: int) -> Tensor:
    """An image condition's first `channels` channels (a grey one repeated; a mask's known/hole
    channel left out)."""
    if condition.shape[1] >= channels:
        return condition[:, :channels]
    return condition[:, :1].expand(-1, channels, -1, -1)


def shown_as(condition: Tensor, channels: int, size: int) -> Tensor:
    """Image conditions (N, C', h, w) in [-1, 1] as images to show beside what a model makes of
    them: `as_image`, at `size` (nearest neighbour, so a low-resolution condition shows its
    pixels)."""
    return torch.nn.functional.interpolate(
        as_image(condition, channels).float(), size, mode="nearest"
    )


def paired_rows(condition: Tensor, made: Tensor, real: Tensor, nrow: int) -> Tensor:
    """Rows of `nrow` conditions (their pixels), what a model made of them and the targets, in
    turn, as one batch of images (len(real) a multiple of nrow)."""
    shown = shown_as(condition, real.shape[1], real.shape[-1])
    rows = torch.stack([t.view(-1, nrow, *real.shape[1:]) for t in (shown, made, real)], 1)
    return rows.flatten(0, 2)


PAIRED_ROW = 8  # pairs per row of a training grid of a model that generates from images


def paired_count(num: int, available: int) -> int:
    """How many pairs such a grid shows: at most `num` of the `available`, in whole rows."""
    n = min(num, available)
    return n // PAIRED_ROW * PAIRED_ROW or n


def paired_grid(condition: Tensor, made: Tensor, real: Tensor) -> Tensor:
    """`paired_rows` PAIRED_ROW to a row as a grid: the grid of a model that generates from
    images."""
    nrow = min(PAIRED_ROW, len(real))
    return to_grid(paired_rows(condition, made, real, nrow), nrow)


def padded(make: Callable[[Tensor], Tensor], condition: Tensor, multiple: int, scale: int):
    """`make` (conditions to images `scale` times their size) on a condition padded at its
    bottom and right edges (repeating them) to whole multiples of `multiple` pixels, the output
    cut back to `scale` times the condition's size."""
    h, w = condition.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if not pad_h and not pad_w:
        return make(condition)
    made = make(torch.nn.functional.pad(condition, (0, pad_w, 0, pad_h), mode="replicate"))
    return made[..., : h * scale, : w * scale]


def tiled(
    make: Callable[[Tensor], Tensor], condition: Tensor, scale: int, tile: int, overlap: int
) -> Tensor:
    """`make` (conditions to images `scale` times their size) over a large condition, in tiles of
    `tile` pixels per side, each made with `overlap` pixels of its neighbours around it that are
    cut off again: the whole image's output where `overlap` covers what a network sees around a
    pixel (a CNN's receptive field), so memory stays that of one tile."""
    n, _, h, w = condition.shape
    if h <= tile and w <= tile:
        return make(condition)
    rows = []
    for top in range(0, h, tile):
        row = []
        for left in range(0, w, tile):
            t, b = max(0, top - overlap), min(h, top + tile + overlap)
            lt, r = max(0, left - overlap), min(w, left + tile + overlap)
            piece = make(condition[..., t:b, lt:r])
            dy, dx = (top - t) * scale, (left - lt) * scale
            size_y, size_x = min(tile, h - top) * scale, min(tile, w - left) * scale
            row.append(piece[..., dy : dy + size_y, dx : dx + size_x])
        rows.append(torch.cat(row, dim=-1))
    return torch.cat(rows, dim=-2)


def enlarged(condition: Tensor, scale: int) -> Tensor:
    """Images (N, C, h, w) at `scale` times their size by bicubic interpolation as the super-
    resolution papers' MATLAB imresize and PIL do it (Keys' kernel with a = -0.5, pixel centres
    aligned; torch's antialiased path, where its plain bicubic uses a = -0.75): their baseline,
    and what SRCNN sees."""
    if scale == 1:
        return condition
    return torch.nn.functional.interpolate(
        condition, scale_factor=scale, mode="bicubic", antialias=True
    )


def tiles(image: Tensor, size: int, stride: int) -> Tensor:
    """The size x size tiles of a (C, H, W) image every `stride` pixels, the last row and column
    of tiles flush with its edges, as (N, C, size, size); an image smaller than a tile is first
    enlarged (bicubic) until its shorter side is one tile."""
    h, w = image.shape[-2:]
    if min(h, w) < size:
        grow = size / min(h, w)
        image = (
            torch.nn.functional.interpolate(
                image[None].float(),
                size=(max(size, round(h * grow)), max(size, round(w * grow))),
                mode="bicubic",
                antialias=True,
            )[0]
            .round()
            .clamp(0, 255)
            .to(image.dtype)
        )
        h, w = image.shape[-2:]

    def starts(length: int) -> list[int]:
        first = list(range(0, length - size + 1, stride))
        return first + ([length - size] if first[-1] != length - size else [])

    return torch.stack([image[:, t : t + size, s : s + size] for t in starts(h) for s in starts(w)])
