"""The flow family: conditional flow matching (Lipman et al. 2023) on the straight path of
rectified flow (Liu et al. 2023), x_t = (1 - t) x0 + t noise, the network regressing its
velocity noise - x0; an ODE solver (`genlab.models.flow_solvers`) carries noise at t = 1 to an
image at t = 0 in `solver.steps` network evaluations.

`model=flow` takes the diffusion family's networks (diffusers' U-Net, or the DiT), its classes
with classifier-free guidance, its image condition and its moving average (`NoiseToImage`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from genlab.data.loader import Batch
from genlab.losses import FlowMatchingLoss, path_velocity, straight_path
from genlab.metrics.likelihood import BIN_NATS, dequantize
from genlab.models.common import eval_mode
from genlab.models.flow_solvers import FlowSolver, log_density
from genlab.models.noise_to_image import Denoiser, NoiseToImage
from genlab.optim import Updater

# the network's time input is t times this: the range of diffusion timesteps its sinusoidal
# embedding was made for (as Stable Diffusion 3 feeds sigma * 1000)
TIME_SCALE = 1000.0


class Flow(NoiseToImage):
    """A velocity `network` (x_t, t * TIME_SCALE, labels) trained with `objective` (the loss
    group's flow matching; none for a model that only samples, as an export) and sampled by
    `sampler` (the solver group's ODE solvers: euler, heun, midpoint). The other keys are the
    diffusion family's (`NoiseToImage`)."""

    abilities: ClassVar[frozenset[str]] = frozenset({"interpolate", "likelihood"})
    family = "flow model"

    def __init__(
        self,
        network: Callable[..., nn.Module],
        sampler: FlowSolver,
        objective: FlowMatchingLoss | None = None,
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
        self.objective = objective

    def train_step(
        self, batches: Iterator[Batch], update: Updater, metrics: bool = True
    ) -> dict[str, Tensor]:
        """One update: each image moved along its straight path to noise, to a time the
        objective draws; the network's velocity there against the path's."""
        loss = self.objective
        if loss is None:
            raise ValueError("this flow model only samples: it was built without objective")
        x0, noise, labels = self.pair(batches)
        t = loss.draw(len(x0), x0.device)
        if noise is None:
            noise = torch.randn_like(x0)
        seen, labels = self.network_input(straight_path(x0, noise, t), labels)
        with update.autocast():
            out = self.trained("network")(seen, t * TIME_SCALE, labels)
            value = loss(out.float(), path_velocity(x0, noise))
        norm = update(value, "model", measure=metrics)
        return self.stepped("flow_matching", value, norm, metrics)

    def pair(self, batches: Iterator[Batch]) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """The images, the noise at the other end of their paths (None: fresh noise, drawn
        from torch's generator after the times), and their labels (or conditions): here the next
        batch's images and labels."""
        x0, labels = next(batches)
        return x0, None, labels

    def run_solver(
        self,
        solver: FlowSolver,
        denoise: Denoiser,
        noise: Tensor,
        gen: torch.Generator | None,
        keep: int,
    ) -> tuple[Tensor, list[tuple[Any, Tensor]]]:
        """The ODE from t = 1 to 0 (deterministic: `gen` is not drawn from)."""
        return solver.solve(scaled(denoise), noise, keep)

    def interpolation_solver(self) -> FlowSolver:
        return self.sampler  # every ODE solver is deterministic

    def sampling_protocol(self) -> dict[str, Any]:
        """The solver and its network evaluations (NFE) and guidance."""
        return self.sampler.protocol()

    def pipeline_scheduler(self) -> Any:
        """diffusers' Euler for flow matching, on our time scale (its timestep is sigma * 1000,
        sigma our t, the velocity's sign and direction ours): the export's `DDPMPipeline`
        samples with it (its grid of N steps: N times from 1 to 1/1000, then 0), shifted as the
        solver's (`shift`)."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=int(TIME_SCALE), shift=self.sampler.shift
        )

    # --- likelihood -----------------------------------------------------------------------------

    def likelihood(
        self, images: Tensor, k: int, seed: int, batch_size: int = 250
    ) -> tuple[dict[str, float], dict[str, Any]]:
        """The flow's density through its ODE (`log_density`: adaptive, each network evaluation
        with a divergence) of uniformly dequantized `images`, plus log 128 per dimension: an
        upper bound on the 8-bit values' NLL, as the VAE's. A class-conditional model is scored
        unconditionally (the null label). k = 0: none (the evaluation during training skips
        it); any other k: the same adaptive ODE."""
        if not k:
            return {}, {}
        gen = torch.Generator(device=images.device).manual_seed(seed)
        total, evaluations = 0.0, []
        with eval_mode(self):
            for x in images.split(batch_size):
                labels = None
                if self.num_classes:
                    labels = torch.full((len(x),), self.num_classes, device=x.device)
                x = dequantize(x.float(), gen)
                velocity = self.denoiser(labels, 1.0)
                density, spent = log_density(scaled(velocity), x, gen)
                total -= float(density.sum())
                evaluations.append(spent)
        dims = images[0].numel()
        nats = total / len(images) + dims * BIN_NATS
        protocol = {
            "likelihood": "bound on the 8-bit values: the flow's density by its ODE (dopri5 to "
            "1e-5; Hutchinson's divergence, one Rademacher probe per image), of uniformly "
            "dequantized images, + log 128 per dimension",
            "likelihood_evaluations": round(sum(evaluations) / len(evaluations)),
        }
        return {"nll_ode": nats, "nll_ode_bits_per_dim": nats / (dims * math.log(2))}, protocol


def scaled(denoise: Denoiser) -> Callable[[Tensor, Tensor], Tensor]:
    """The network's output at flow time t (it sees t * TIME_SCALE)."""
    return lambda x, t: denoise(x, t * TIME_SCALE)
