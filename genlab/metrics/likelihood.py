"""VAE test metrics: negative ELBO, importance-sampled NLL (of the 8-bit values, by uniform
dequantization) and reconstruction quality."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from genlab.losses import ELBO, LEVELS, gaussian_kl, to_levels


def _log_normal(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mu, exp(logvar)) summed over the last dimension."""
    return -0.5 * (((z - mu) ** 2) / logvar.exp() + logvar + math.log(2 * math.pi)).sum(-1)


def dequantize(images: Tensor, generator: torch.Generator) -> Tensor:
    """Uniform dequantization: images in [-1, 1] whose 8-bit values are v become
    (v + u) / 128 - 1 with u ~ U[0, 1) per sub-pixel, spread over each value's bin of width
    2/256. A density's NLL of these, plus log 128 per dimension, bounds the NLL of the 8-bit
    values from above (Theis et al. 2016)."""
    u = torch.rand(images.shape, generator=generator, device=images.device)
    return (to_levels(images) + u) / (LEVELS / 2) - 1


BIN_NATS = math.log(LEVELS / 2)  # per dimension: -log of a bin's width (2/256) in [-1, 1] units


@torch.no_grad()
def vae_metrics(
    vae, loss: ELBO, images: Tensor, k: int = 100, batch_size: int = 250, seed: int = 0
) -> dict[str, float]:
    """Per-image means over `images` (float, [-1, 1]) of their 8-bit values: `neg_elbo` and
    `nll_is` (the importance-sampled negative log-likelihood with `k` samples from q(z|x), a
    tighter bound; skipped when k=0), in nats and in bits per dimension, both of the decoder's
    normalized density (`ELBO.density_nll`) on uniformly dequantized images plus
    log 128 per dimension (`dequantize`): upper bounds on the 8-bit values' NLL, comparable
    with the exact and discrete likelihoods of other families. Also the reconstruction
    (decoder mean at the posterior mean of the images themselves) `recon_mse`, `psnr` and
    `ssim` on [0, 1] pixels."""
    from torchmetrics.functional.image import (
        peak_signal_noise_ratio,
        structural_similarity_index_measure,
    )

    gen = torch.Generator(device=images.device).manual_seed(seed)
    totals = {"neg_elbo": 0.0, "recon_mse": 0.0, "psnr": 0.0, "ssim": 0.0}
    if k:
        totals["nll_is"] = 0.0
    was_training = vae.training
    vae.eval()
    for images_part in images.split(batch_size):
        x = dequantize(images_part, gen)
        mu, logvar = vae.encode(x)
        eps = torch.randn(mu.shape, generator=gen, device=x.device)
        decoded = vae.decoder(mu + eps * (0.5 * logvar).exp())
        totals["neg_elbo"] += float((loss.density_nll(decoded, x) + gaussian_kl(mu, logvar)).sum())
        log_w = []
        for _ in range(k):
            eps = torch.randn(mu.shape, generator=gen, device=x.device)
            z = mu + eps * (0.5 * logvar).exp()
            log_px_z = -loss.density_nll(vae.decoder(z), x)
            log_pz = _log_normal(z, torch.zeros_like(z), torch.zeros_like(z))
            log_w.append(log_px_z + log_pz - _log_normal(z, mu, logvar))
        if k:
            log_mean_w = torch.logsumexp(torch.stack(log_w), 0) - math.log(k)
            totals["nll_is"] -= float(log_mean_w.sum())
        recon = (loss.mean(vae.decoder(vae.encode(images_part)[0])) + 1) / 2
        target = (images_part + 1) / 2
        totals["recon_mse"] += float(((recon - target) ** 2).flatten(1).mean(1).sum())
        psnr = peak_signal_noise_ratio(
            recon, target, data_range=1.0, reduction="none", dim=(1, 2, 3)
        )
        totals["psnr"] += float(psnr.sum())
        ssim = structural_similarity_index_measure(recon, target, data_range=1.0, reduction="none")
        totals["ssim"] += float(ssim.sum())
    vae.train(was_training)
    out = {k: v / len(images) for k, v in totals.items()}
    dims = images[0].numel()
    for name in ("neg_elbo", "nll_is") if k else ("neg_elbo",):
        out[name] += dims * BIN_NATS
        out[f"{name}_bits_per_dim"] = out[name] / (dims * math.log(2))
    return out
