"""VAE test metrics: negative ELBO, importance-sampled NLL and reconstruction quality."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from genlab.losses import ELBO, gaussian_kl


def _log_normal(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mu, exp(logvar)) summed over the last dimension."""
    return -0.5 * (((z - mu) ** 2) / logvar.exp() + logvar + math.log(2 * math.pi)).sum(-1)


@torch.no_grad()
def vae_metrics(
    vae, loss: ELBO, images: Tensor, k: int = 100, batch_size: int = 250, seed: int = 0
) -> dict[str, float]:
    """Per-image means over `images` (float, [-1, 1]): `neg_elbo` (nats), `nll_is` (the
    importance-sampled negative log-likelihood with `k` samples from q(z|x), nats; a tighter
    bound than the ELBO; skipped when k=0), both in bits per dimension too, and the
    reconstruction (decoder mean at the posterior mean) `recon_mse`, `psnr` and `ssim` on [0, 1]
    pixels."""
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
    for x in images.split(batch_size):
        mu, logvar = vae.encode(x)
        eps = torch.randn(mu.shape, generator=gen, device=x.device)
        decoded = vae.decoder(mu + eps * (0.5 * logvar).exp())
        totals["neg_elbo"] += float((loss.nll(decoded, x) + gaussian_kl(mu, logvar)).sum())
        log_w = []
        for _ in range(k):
            eps = torch.randn(mu.shape, generator=gen, device=x.device)
            z = mu + eps * (0.5 * logvar).exp()
            log_px_z = -loss.nll(vae.decoder(z), x)
            log_pz = _log_normal(z, torch.zeros_like(z), torch.zeros_like(z))
            log_w.append(log_px_z + log_pz - _log_normal(z, mu, logvar))
        if k:
            log_mean_w = torch.logsumexp(torch.stack(log_w), 0) - math.log(k)
            totals["nll_is"] -= float(log_mean_w.sum())
        recon, target = (loss.mean(vae.decoder(mu)) + 1) / 2, (x + 1) / 2
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
    out["neg_elbo_bits_per_dim"] = out["neg_elbo"] / (dims * math.log(2))
    if k:
        out["nll_is_bits_per_dim"] = out["nll_is"] / (dims * math.log(2))
    return out
