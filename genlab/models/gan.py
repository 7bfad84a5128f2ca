"""The GAN family: a generator and a discriminator trained adversarially.

`model=gan`, `model=cgan` and `model=dcgan` are all this class with different networks; the
networks arrive as partially built callables and receive the data set's shape here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from genlab.data.loader import Batch
from genlab.images import square_side, to_grid
from genlab.losses import AdversarialLoss, gradient_penalty
from genlab.models.common import eval_mode
from genlab.optim import OptimizerSpec


class GAN(nn.Module):
    def __init__(
        self,
        generator: Callable[..., nn.Module],
        discriminator: Callable[..., nn.Module],
        latent_dim: int = 100,
        conditional: bool = False,
        *,
        channels: int,
        image_size: int,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
        if conditional and not num_classes:
            raise ValueError(
                "a class-conditional GAN needs class labels, and this data set has none "
                "(for image_folder, put the images in one sub-folder per class)"
            )
        self.latent_dim = latent_dim
        self.num_classes = num_classes if conditional else 0
        self.generator = generator(
            latent_dim=latent_dim,
            channels=channels,
            image_size=image_size,
            num_classes=self.num_classes,
        )
        self.discriminator = discriminator(
            channels=channels, image_size=image_size, num_classes=self.num_classes
        )

    # --- wiring ---------------------------------------------------------------------------------

    def check_loss(self, loss: object) -> None:
        if not isinstance(loss, AdversarialLoss):
            raise ValueError("GAN models take an adversarial loss: bce, hinge, lsgan or wgan_gp")
        if loss.gp_weight and any(
            isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d) for m in self.discriminator.modules()
        ):
            raise ValueError(
                "the gradient penalty needs a discriminator without BatchNorm: "
                "set model.discriminator.norm=layer (or none)"
            )

    def configure_optimizers(self, spec: OptimizerSpec) -> dict[str, torch.optim.Optimizer]:
        return {
            "g": spec(self.generator.parameters(), "g"),
            "d": spec(self.discriminator.parameters(), "d"),
        }

    def batches_per_step(self, loss: AdversarialLoss) -> int:
        return loss.n_critic

    # --- training -------------------------------------------------------------------------------

    def noise(self, n: int, device: torch.device, generator: torch.Generator | None = None):
        return torch.randn(n, self.latent_dim, device=device, generator=generator)

    def _labels(self, labels: Tensor | None) -> Tensor | None:
        return labels if self.num_classes else None

    def train_step(
        self,
        batches: Iterator[Batch],
        loss: AdversarialLoss,
        optimizers: dict[str, torch.optim.Optimizer],
    ) -> dict[str, Tensor]:
        """`n_critic` discriminator updates on fresh batches, then one generator update."""
        G, D = self.generator, self.discriminator
        metrics: dict[str, Tensor] = {}
        D.requires_grad_(True)
        for _ in range(loss.n_critic):
            real, labels = next(batches)
            labels = self._labels(labels)
            with torch.no_grad():
                fake = G(self.noise(len(real), real.device), labels)
            real_out, fake_out = D(real, labels), D(fake, labels)
            d_loss = loss.d_loss(real_out, fake_out)
            if loss.gp_weight:
                gp = gradient_penalty(D, real, fake, labels)
                d_loss = d_loss + loss.gp_weight * gp
                metrics["loss/gp"] = gp.detach()
            optimizers["d"].zero_grad(set_to_none=True)
            d_loss.backward()
            optimizers["d"].step()

        D.requires_grad_(False)  # the generator step needs no discriminator weight gradients
        fake = G(self.noise(len(real), real.device), labels)
        g_loss = loss.g_loss(D(fake, labels))
        optimizers["g"].zero_grad(set_to_none=True)
        g_loss.backward()
        optimizers["g"].step()
        D.requires_grad_(True)

        metrics.update(
            {
                "loss/d": d_loss.detach(),
                "loss/g": g_loss.detach(),
                "D(x)": loss.score(real_out.detach()).mean(),
                "D(G(z))": loss.score(fake_out.detach()).mean(),
            }
        )
        return metrics

    # --- sampling -------------------------------------------------------------------------------

    def fixed_inputs(self, num: int, examples: Batch, seed: int) -> dict[str, Tensor | None]:
        """Noise (and labels: one row per class for a conditional GAN) reused at every grid."""
        device = examples[0].device
        labels = None
        if self.num_classes:
            per_class = max(1, num // self.num_classes)
            labels = torch.arange(self.num_classes, device=device).repeat_interleave(per_class)
            num = len(labels)
        gen = torch.Generator(device=device).manual_seed(seed)
        return {"z": self.noise(num, device, gen), "labels": labels}

    @torch.no_grad()
    def sample_grids(self, fixed: dict, loss: AdversarialLoss) -> dict[str, Tensor]:
        with eval_mode(self):
            images = self.generator(fixed["z"], fixed["labels"])
        nrow = len(images) // self.num_classes if self.num_classes else square_side(len(images))
        return {"samples": to_grid(images, nrow)}
