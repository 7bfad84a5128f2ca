"""The VAE (Kingma & Welling): encoder to mean and log-variance, decoder to likelihood; and its
convolutional networks."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from genlab.data.loader import Batch
from genlab.errors import require_at_least
from genlab.images import square_side, to_grid
from genlab.losses import ELBO, gaussian_kl
from genlab.metrics.likelihood import BIN_NATS, dequantize
from genlab.models.base import Condition, Exported, Family, GridInputs, standalone_node
from genlab.models.common import eval_mode
from genlab.optim import OptimizerSpec, Updater


class VAE(Family):
    """An encoder from images to the latent mean and log-variance (`2 * latent_dim` outputs) and a
    decoder from latents to the likelihood's parameters (image-shaped). The networks arrive as
    partially built callables (`model=vae`: convolutional, `model=vae_mlp`: fully connected) and
    receive the data set's shape and `latent_dim` here."""

    roles: ClassVar[dict[str, str]] = {"vae": "VAE"}
    abilities: ClassVar[frozenset[str]] = frozenset({"interpolate", "reconstruct", "likelihood"})

    def __init__(
        self,
        encoder: Callable[..., nn.Module],
        decoder: Callable[..., nn.Module],
        objective: ELBO,
        latent_dim: int = 16,
        init_from: str | None = None,
        freeze: Sequence[str] = (),
        *,
        channels: int,
        image_size: int,
        num_classes: int | None = None,
    ) -> None:
        super().__init__(latent_dim, 0, channels, image_size)
        shape = dict(self.shape)
        self.encoder = encoder(latent_dim=latent_dim, **shape)
        self.decoder = decoder(latent_dim=latent_dim, **shape)
        self.objective = objective  # its likelihood also maps decoder outputs to images
        self.finish(init_from, freeze)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Decoder output for a reparameterised z ~ q(z|x), with q's mean and log-variance."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return self.decoder(z), mu, logvar

    # --- training -------------------------------------------------------------------------------

    def configure_optimizers(self, spec: OptimizerSpec) -> dict[str, torch.optim.Optimizer]:
        return {"vae": spec(self.parameters())}

    def train_step(
        self, batches: Iterator[Batch], update: Updater, metrics: bool = True
    ) -> dict[str, Tensor]:
        """One update on a fresh batch; the loss terms as tensors, and with `metrics` the gradient
        norm."""
        x, _ = next(batches)
        with update.autocast():
            decoded, mu, logvar = self.trained()(x)
            terms = self.objective(decoded.float(), x, mu.float(), logvar.float())
        values = {f"loss/{k}": v.detach() for k, v in terms.items()}
        norm = update(terms["loss"], "vae", measure=metrics)
        if metrics:
            values["grad_norm/vae"] = norm
        return values

    # --- sampling -------------------------------------------------------------------------------

    def fixed_inputs(self, num: int, examples: Batch, seed: int) -> GridInputs:
        device = examples[0].device
        gen = torch.Generator(device=device).manual_seed(seed)
        z = torch.randn(num, self.latent_dim, device=device, generator=gen)
        nrow = square_side(num)
        real = examples[0][: max(nrow, num // nrow * nrow)]  # whole rows of real images
        return GridInputs(z, real=real)

    @torch.no_grad()
    def generate(self, n: int, gen: torch.Generator, condition: Condition = None) -> Tensor:
        """`n` images in [-1, 1]: the decoder's mean for z drawn from the prior."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.latent_dim, device=device, generator=gen)
        with eval_mode(self):
            return self.decode_latents(z)

    def decode_latents(self, z: Tensor, condition: Condition = None) -> Tensor:
        """The decoder's mean images for given latents."""
        return self.objective.mean(self.decoder(z))

    @torch.no_grad()
    def reconstruct(self, images: Tensor) -> Tensor:
        """The decoder's mean at the posterior mean of each image."""
        with eval_mode(self):
            return self.objective.mean(self.decoder(self.encode(images)[0]))

    def likelihood(
        self, images: Tensor, k: int, seed: int
    ) -> tuple[dict[str, float], dict[str, Any]]:
        """Negative ELBO, importance-sampled NLL and reconstruction quality on `images`."""
        return vae_metrics(self, self.objective, images, k=k, seed=seed), self._protocol(k)

    def _protocol(self, k: int) -> dict[str, Any]:
        loss = self.objective
        density = (
            "continuous Bernoulli on grey levels in [0, 1] (the trained Bernoulli, normalized)"
            if loss.likelihood == "bernoulli"
            else f"gaussian, sigma {loss.sigma} on [-1, 1]"
        )
        return {
            "binarised": False,
            "likelihood": f"bound on the 8-bit values: {density}, of uniformly dequantized "
            "images, + log 128 per dimension",
            "nll_samples": k,
        }

    @torch.no_grad()
    def sample_grids(self, fixed: GridInputs) -> dict[str, Tensor]:
        """Prior samples, and real images (odd rows) above their reconstructions (even rows)."""
        real = fixed.real
        with eval_mode(self):
            samples = self.objective.mean(self.decoder(fixed.latents))
        recon = self.reconstruct(real)
        nrow = square_side(len(fixed.latents))
        rows = (t.view(-1, nrow, *t.shape[1:]) for t in (real, recon))
        pairs = torch.stack(tuple(rows), dim=1)  # (rows, 2, nrow, C, H, W)
        return {
            "samples": to_grid(samples, square_side(len(samples))),
            "reconstructions": to_grid(pairs.flatten(0, 2), nrow),
        }

    def export_sampler(self, node: DictConfig) -> Exported:
        """The decoder, with the likelihood's mean as the image."""
        output = "sigmoid" if self.objective.likelihood == "bernoulli" else "clamp"
        built = standalone_node(node.decoder, latent_dim=self.latent_dim, **self.shape)
        return Exported(self.decoder, built, output)


def _conv_side(image_size: int, features: int, hidden: int) -> int:
    """The side after two stride-2 convolutions, once the sizes are checked."""
    require_at_least(1, features=features, hidden=hidden)
    if image_size % 4:
        raise ValueError(
            f"the convolutional VAE needs an image size divisible by 4, got {image_size} "
            "(model=vae_mlp takes any size)"
        )
    return image_size // 4


class ConvEncoder(nn.Sequential):
    """Two stride-2 convolutions (`features`, then twice as many) and a hidden layer, to the
    latent mean and log-variance."""

    def __init__(
        self, channels: int, image_size: int, latent_dim: int, features: int = 32, hidden: int = 256
    ) -> None:
        side, f = _conv_side(image_size, features, hidden), features
        super().__init__(
            nn.Conv2d(channels, f, 4, 2, 1),
            nn.ReLU(True),
            nn.Conv2d(f, 2 * f, 4, 2, 1),
            nn.ReLU(True),
            nn.Flatten(),
            nn.Linear(2 * f * side * side, hidden),
            nn.ReLU(True),
            nn.Linear(hidden, 2 * latent_dim),
        )


class ConvDecoder(nn.Sequential):
    """The encoder mirrored: a hidden layer and two stride-2 transposed convolutions."""

    def __init__(
        self, channels: int, image_size: int, latent_dim: int, features: int = 32, hidden: int = 256
    ) -> None:
        side, f = _conv_side(image_size, features, hidden), features
        super().__init__(
            nn.Linear(latent_dim, hidden),
            nn.ReLU(True),
            nn.Linear(hidden, 2 * f * side * side),
            nn.ReLU(True),
            nn.Unflatten(1, (2 * f, side, side)),
            nn.ConvTranspose2d(2 * f, f, 4, 2, 1),
            nn.ReLU(True),
            nn.ConvTranspose2d(f, channels, 4, 2, 1),
        )


# --- likelihood -------------------------------------------------------------------------------


def _log_normal(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mu, exp(logvar)) summed over the last dimension."""
    return -0.5 * (((z - mu) ** 2) / logvar.exp() + logvar + math.log(2 * math.pi)).sum(-1)


@torch.no_grad()
def vae_metrics(
    vae: VAE, loss: ELBO, images: Tensor, k: int = 100, batch_size: int = 250, seed: int = 0
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
