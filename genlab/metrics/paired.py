"""Paired metrics of image-conditional models: each output against its target, with the
conventions of the super-resolution papers (torchmetrics computes them)."""

from __future__ import annotations

import torch
from torch import Tensor

# ITU-R BT.601 as MATLAB's rgb2ycbcr (the SR papers' Y channel): offset and weights on [0, 1]
Y_OFFSET, Y_WEIGHTS = 16 / 255, (65.481 / 255, 128.553 / 255, 24.966 / 255)


def luma(images: Tensor) -> Tensor:
    """The Y channel (N, 1, H, W) in [16/255, 235/255] of RGB images in [0, 1]."""
    weights = torch.tensor(Y_WEIGHTS, dtype=images.dtype, device=images.device)
    return Y_OFFSET + (images * weights[:, None, None]).sum(1, keepdim=True)


def paired_metrics(
    outputs: Tensor, targets: Tensor, border: int = 0, baseline: Tensor | None = None
) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM (Gaussian window 11, sigma 1.5) of uint8 `outputs` against their
    uint8 `targets` (N, C, H, W), on [0, 1]: on the Y channel for colour images, with `border`
    pixels cropped at each edge; and the same of a `baseline`'s outputs, as `baseline/psnr` and
    `baseline/ssim`."""
    if baseline is not None:
        theirs = paired_metrics(baseline, targets, border)
        ours = paired_metrics(outputs, targets, border)
        return ours | {f"baseline/{k}": v for k, v in theirs.items()}
    # imported here: torchmetrics brings torchvision and scipy, seconds of every command's start
    from torchmetrics.functional.image import (
        peak_signal_noise_ratio,
        structural_similarity_index_measure,
    )

    x, y = (t.double() / 255 for t in (outputs, targets))
    if x.shape[1] == 3:
        x, y = luma(x), luma(y)
    if border:
        x, y = (t[..., border:-border, border:-border] for t in (x, y))
    psnr = peak_signal_noise_ratio(x, y, data_range=1.0, reduction="none", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(x, y, data_range=1.0, reduction="none")
    return {"psnr": float(psnr.mean()), "ssim": float(ssim.mean())}


def paired_protocol(channels: int, border: int, pairs: int) -> str:
    """How `paired_metrics` measured, for the protocol beside the numbers."""
    space = "Y channel (BT.601, as MATLAB's rgb2ycbcr)" if channels == 3 else "the image"
    return (
        f"mean over {pairs} held-out pairs of each output (8-bit) against its target, on {space} "
        f"in [0, 1], {border} px cropped at each edge; SSIM: Gaussian window 11, sigma 1.5"
    )
