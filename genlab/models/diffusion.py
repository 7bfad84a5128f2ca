"""The diffusion family (Ho et al. 2020): a network learns to undo Gaussian noise added to images
over `timesteps` steps; a solver (`genlab.models.solvers`) runs the learnt reverse process.

`model=ddpm` takes diffusers' U-Net (`genlab.models.unet`), `model=dit` a Diffusion Transformer
(`genlab.models.dit`); both are this class. Given an image condition (`model=sr3`, a `condition=`
of the condition group) it is SR3 (Saharia et al. 2021): the condition, enlarged bicubically to
the image's size, is concatenated to the noisy image the network sees. The noise schedule is
diffusers' DDPM scheduler, so the exported diffusers pipeline samples exactly as genlab does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, Literal

import torch
from diffusers import DDPMScheduler
from torch import Tensor, nn

from genlab.data.loader import Batch
from genlab.errors import require_at_least
from genlab.losses import DenoisingLoss
from genlab.models import denoising
from genlab.models.common import eval_mode
from genlab.models.noise_to_image import Denoiser, NoiseToImage
from genlab.models.solvers import DDIM, Solver, training_schedule
from genlab.optim import Updater


class Diffusion(NoiseToImage):
    """A denoising `network` (x_t, t, labels) -> the `prediction` target (`eps`, `v` or `x0`),
    trained on the `schedule` (`linear` from `beta_start` to `beta_end`, or `cosine`) of
    `timesteps` steps with `objective` (the loss group's denoising loss; none for a model that
    only samples, as an export), and sampled by `sampler` (the solver group). With
    `conditional`, labels are dropped to the null label with probability `label_dropout`, so
    the sampler's `guidance` can mix the conditional and unconditional outputs. `ema_decay`:
    samples come from an exponential moving average of the network (null: the network itself).
    Grids show at most `grid_images` images (each a solver run)."""

    abilities: ClassVar[frozenset[str]] = frozenset({"interpolate", "likelihood"})
    family = "diffusion model"

    def __init__(
        self,
        network: Callable[..., nn.Module],
        sampler: Solver,
        objective: DenoisingLoss | None = None,
        prediction: denoising.Prediction = "eps",
        schedule: Literal["linear", "cosine"] = "linear",
        timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        conditional: bool = False,
        label_dropout: float = 0.1,
        ema_decay: float | None = 0.999,
        ema_start: int = 0,
        grid_images: int = 16,
        init_from: str | None = None,
        freeze: Sequence[str] = (),
        *,
        channels: int,
        image_size: int,
        num_classes: int | None = None,
        condition_shape: Sequence[int] | None = None,
    ) -> None:
        if prediction not in denoising.DIFFUSERS_PREDICTION:
            raise ValueError(f"prediction must be eps, v or x0, got {prediction!r}")
        if schedule not in ("linear", "cosine"):
            raise ValueError(f"schedule must be linear or cosine, got {schedule!r}")
        require_at_least(2, timesteps=timesteps)
        if not 0 < beta_start < beta_end < 1:
            raise ValueError(
                f"beta_start and beta_end need 0 < beta_start < beta_end < 1, got {beta_start} "
                f"and {beta_end}"
            )
        super().__init__(
            network,
            sampler,
            conditional,
            label_dropout,
            ema_decay,
            ema_start,
            grid_images,
            init_from,
            freeze,
            channels=channels,
            image_size=image_size,
            num_classes=num_classes,
            condition_shape=condition_shape,
        )
        self.prediction, self.objective = prediction, objective
        self.noise_schedule = training_schedule(
            timesteps, schedule, prediction, beta_start, beta_end
        )
        alpha_bar = self.noise_schedule.alphas_cumprod.float()
        self.register_buffer("alpha_bar", alpha_bar, persistent=False)

    @property
    def timesteps(self) -> int:
        return len(self.alpha_bar)

    # --- training -------------------------------------------------------------------------------

    def train_step(
        self, batches: Iterator[Batch], update: Updater, metrics: bool = True
    ) -> dict[str, Tensor]:
        """One update: each image noised to a uniformly drawn timestep, the network's output
        against the prediction target, weighted per image by the objective."""
        loss = self.objective
        if loss is None:
            raise ValueError("this diffusion model only samples: it was built without objective")
        x0, labels = next(batches)
        n, device = len(x0), x0.device
        t = torch.randint(0, self.timesteps, (n,), device=device)
        eps = torch.randn_like(x0)
        x_t = denoising.add_noise(x0, eps, t, self.alpha_bar)
        seen, labels = self.network_input(x_t, labels)
        target = denoising.target(self.prediction, x0, eps, t, self.alpha_bar)
        weight = denoising.loss_weight(
            self.prediction, denoising.snr(self.alpha_bar)[t], loss.weighting, loss.gamma
        )
        with update.autocast():
            out = self.trained("network")(seen, t, labels)
            value = loss(out.float(), target, weight)
        norm = update(value, "model", measure=metrics)
        return self.stepped("denoising", value, norm, metrics)

    # --- sampling -------------------------------------------------------------------------------

    def run_solver(
        self,
        solver: Solver,
        denoise: Denoiser,
        noise: Tensor,
        gen: torch.Generator | None,
        keep: int,
    ) -> tuple[Tensor, list[tuple[int, Tensor]]]:
        """The solver through the training schedule's timesteps."""
        return solver.solve(denoise, noise, self.noise_schedule.config, gen, keep)

    def interpolation_solver(self) -> Solver:
        """The solver that maps noise to images deterministically (the probability-flow ODE): the
        model's sampler, or for a stochastic one DDIM with eta 0 in as many steps."""
        if self.sampler.deterministic:
            return self.sampler
        steps = self.sampler.steps_for(self.noise_schedule.config)
        return DDIM(steps=steps, guidance=self.sampler.guidance, clip=self.sampler.clip)

    def sampling_protocol(self) -> dict[str, Any]:
        """The solver, its steps and guidance."""
        return self.sampler.protocol(self.noise_schedule.config)

    def pipeline_scheduler(self) -> DDPMScheduler:
        """The training schedule, as diffusers' DDPMPipeline samples it."""
        return DDPMScheduler.from_config(self.noise_schedule.config)

    # --- likelihood -----------------------------------------------------------------------------

    @torch.no_grad()
    def likelihood(
        self, images: Tensor, k: int, seed: int, batch_size: int = 250
    ) -> tuple[dict[str, float], dict[str, Any]]:
        """The variational bound (Ho et al. eq. 5) on `images`: the prior term, the decoder's
        discrete likelihood of the 8-bit values at t = 0, and the KL terms of t = 1..T-1, of
        which `k` (one per stratum of equal width) are drawn per image and scaled to their
        stratum: an unbiased estimate, exact when k >= T - 1. k = 0: none (too costly for the
        evaluation during training)."""
        if not k:
            return {}, {}
        gen = torch.Generator(device=images.device).manual_seed(seed)
        strata = min(k, self.timesteps - 1)
        edges = torch.linspace(1, self.timesteps, strata + 1).round().long().tolist()
        net, total = self.sampling_network(), 0.0
        with eval_mode(self):
            for x0 in images.split(batch_size):
                x0 = x0.float()
                first = torch.zeros(len(x0), dtype=torch.long, device=x0.device)
                nats = denoising.prior_kl(x0, self.alpha_bar) + self._term(net, x0, first, gen)
                for low, high in zip(edges[:-1], edges[1:], strict=True):
                    t = torch.randint(low, high, (len(x0),), device=x0.device, generator=gen)
                    nats = nats + (high - low) * self._term(net, x0, t, gen)
                total += float(nats.sum())
        nats = total / len(images)
        bits = nats / (images[0].numel() * math.log(2))
        return {"neg_elbo": nats, "neg_elbo_bits_per_dim": bits}, self._protocol(k)

    def _term(self, net: nn.Module, x0: Tensor, t: Tensor, gen: torch.Generator) -> Tensor:
        eps = torch.randn(x0.shape, device=x0.device, generator=gen)
        x_t = denoising.add_noise(x0, eps, t, self.alpha_bar)
        labels = None
        if self.num_classes:  # the bound of the unconditional model the null label gives
            labels = torch.full_like(t, self.num_classes)
        out = net(x_t, t, labels).float()
        x0_pred = denoising.to_x0(self.prediction, out, x_t, t, self.alpha_bar).clamp(-1, 1)
        return denoising.bound_term(x0, x_t, x0_pred, t, self.alpha_bar)

    def _protocol(self, k: int) -> dict[str, Any]:
        strata = min(k, self.timesteps - 1)
        return {
            "likelihood": "variational bound of the 8-bit values (discrete decoder at t=0; "
            "no dequantization)",
            "bound_timesteps": f"{strata} of {self.timesteps - 1} KL terms, stratified"
            if strata < self.timesteps - 1
            else "all",
        }
