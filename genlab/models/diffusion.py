"""The diffusion family (Ho et al. 2020): a network learns to undo Gaussian noise added to images
over `timesteps` steps; a solver (`genlab.models.solvers`) runs the learnt reverse process.

`model=ddpm` takes diffusers' U-Net (`genlab.models.unet`), `model=dit` a Diffusion Transformer
(`genlab.models.dit`); both are this class. Given an image condition (`model=sr3`, a `condition=`
of the condition group) it is SR3 (Saharia et al. 2021): the condition, enlarged bicubically to
the image's size, is concatenated to the noisy image the network sees. The noise schedule is
diffusers' DDPM scheduler, so the exported diffusers pipeline samples exactly as genlab does.
"""

from __future__ import annotations

import copy
import math
import shutil
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, Literal

import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from omegaconf import DictConfig
from torch import Tensor, nn

from genlab.data.loader import Batch
from genlab.ema import EMA
from genlab.errors import require_at_least, writing
from genlab.files import Outputs, as_the_user_makes, join, temporary_name
from genlab.images import enlarged, padded, paired_count, paired_grid, to_grid
from genlab.losses import DenoisingLoss
from genlab.models import denoising
from genlab.models.base import (
    Condition,
    Exported,
    GridInputs,
    OneNetwork,
    SampleSettings,
    standalone_node,
)
from genlab.models.common import (
    class_rows,
    conditional_classes,
    eval_mode,
    guidance_labels,
    guided,
    row_length,
)
from genlab.models.solvers import DDIM, Solver, training_schedule
from genlab.optim import Updater

PIPELINE = "diffusers"  # the export's folder holding a diffusers pipeline (U-Net models)
TRAJECTORY_ROWS = 8  # timesteps shown by the trajectory grid, the last one the result


class Diffusion(OneNetwork):
    """A denoising `network` (x_t, t, labels) -> the `prediction` target (`eps`, `v` or `x0`),
    trained on the `schedule` (`linear` from `beta_start` to `beta_end`, or `cosine`) of
    `timesteps` steps with `objective` (the loss group's denoising loss; none for a model that
    only samples, as an export), and sampled by `sampler` (the solver group). With
    `conditional`, labels are dropped to the null label with probability `label_dropout`, so
    the sampler's `guidance` can mix the conditional and unconditional outputs. `ema_decay`:
    samples come from an exponential moving average of the network (null: the network itself).
    Grids show at most `grid_images` images (each a solver run)."""

    roles: ClassVar[dict[str, str]] = {"model": "denoiser"}
    conditions: ClassVar[frozenset[str]] = frozenset({"none", "labels", "image"})
    abilities: ClassVar[frozenset[str]] = frozenset({"interpolate", "likelihood"})
    sample_modes: ClassVar[frozenset[str]] = frozenset({"trajectory"})

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
        require_at_least(1, grid_images=grid_images)
        if not 0 < beta_start < beta_end < 1:
            raise ValueError(
                f"beta_start and beta_end need 0 < beta_start < beta_end < 1, got {beta_start} "
                f"and {beta_end}"
            )
        if not 0 <= label_dropout < 1:
            raise ValueError(f"label_dropout must be in [0, 1), got {label_dropout}")
        if conditional and condition_shape is not None:
            raise ValueError(
                "model.conditional=true generates from class labels; with a condition= the model "
                "generates from images: choose one"
            )
        classes = conditional_classes(conditional, num_classes, "diffusion model")
        if sampler.guidance != 1 and not classes:
            raise ValueError(
                f"solver.guidance={sampler.guidance} needs a class-conditional model "
                "(model.conditional=true); an unconditional one samples with guidance 1"
            )
        latent_dim = channels * image_size * image_size
        super().__init__(latent_dim, classes, channels, image_size, condition_shape)
        shape: dict[str, Any] = dict(self.shape)
        self.scale = 1
        if self.condition.shape is not None:  # SR3: the enlarged condition beside the noisy image
            self.scale = image_size // self.condition.shape[1]
            shape["condition_channels"] = self.condition.shape[0]
            self.abilities = frozenset({"interpolate"})  # a bound would need each image's condition
        self.prediction, self.label_dropout = prediction, label_dropout
        self.sampler, self.objective = sampler, objective
        self.grid_images = grid_images
        self.noise_schedule = training_schedule(
            timesteps, schedule, prediction, beta_start, beta_end
        )
        alpha_bar = self.noise_schedule.alphas_cumprod.float()
        self.register_buffer("alpha_bar", alpha_bar, persistent=False)
        self.network = network(num_classes=classes, **shape)
        self.finish(init_from, freeze)
        self.network_ema = None if ema_decay is None else EMA(self.network, ema_decay, ema_start)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @property
    def timesteps(self) -> int:
        return len(self.alpha_bar)

    def sampling_network(self) -> nn.Module:
        """The network that samples: its EMA once averaging has begun, else itself."""
        ema = self.network_ema
        return self.network if ema is None else ema.or_network(self.network)

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
        seen = x_t
        if self.condition.kind == "image":  # labels: the images' conditions
            seen, labels = torch.cat([x_t, enlarged(labels, self.scale)], 1), None
        elif self.num_classes:
            dropped = torch.rand(n, device=device) < self.label_dropout
            labels = torch.where(dropped, self.num_classes, labels)
        else:
            labels = None
        target = denoising.target(self.prediction, x0, eps, t, self.alpha_bar)
        weight = denoising.loss_weight(
            self.prediction, denoising.snr(self.alpha_bar)[t], loss.weighting, loss.gamma
        )
        with update.autocast():
            out = self.trained("network")(seen, t, labels)
            value = loss(out.float(), target, weight)
        norm = update(value, "model", measure=metrics)
        self.updates += 1
        if self.network_ema is not None:
            self.network_ema.update(self.network, self.updates)
        values = {"loss/denoising": value.detach()}
        if metrics:
            values["grad_norm/model"] = norm
        return values

    # --- sampling -------------------------------------------------------------------------------

    def denoiser(
        self, labels: Tensor | None, guidance: float
    ) -> Callable[[Tensor, Tensor], Tensor]:
        """(x_t, t) -> the sampling network's output, with classifier-free guidance: the
        unconditional output + `guidance` * (conditional - unconditional); for an image
        condition (`labels`: the conditions), the noisy image beside its enlarged condition."""
        net = self.sampling_network()
        if self.condition.kind == "image":
            beside = enlarged(labels, self.scale)
            return lambda x, t: net(torch.cat([x, beside.to(x.dtype)], 1), t, None)
        seen = guidance_labels(labels, self.num_classes, guidance)
        if seen is None or len(seen) == len(labels):
            return lambda x, t: net(x, t, seen)

        def denoise(x: Tensor, t: Tensor) -> Tensor:
            cond, uncond = net(torch.cat([x, x]), torch.cat([t, t]), seen).chunk(2)
            return guided(cond, uncond, guidance)

        return denoise

    def solve(
        self,
        noise: Tensor,
        labels: Tensor | None,
        gen: torch.Generator | None,
        solver: Solver | None = None,
        keep: int = 0,
    ) -> tuple[Tensor, list[tuple[int, Tensor]]]:
        """Images from noise by `solver` (the model's sampler by default), in eval mode."""
        solver = solver or self.sampler
        if self.condition.kind != "none" and labels is None:
            raise ValueError(f"this diffusion model generates from {self.condition.describe()}")
        labels = labels if self.condition.kind != "none" else None
        with eval_mode(self):
            denoise = self.denoiser(labels, solver.guidance)
            return solver.solve(denoise, noise, self.noise_schedule.config, gen, keep)

    def _noise(self, n: int, gen: torch.Generator | None, height: int = 0, width: int = 0):
        c, s = self.shape["channels"], self.shape["image_size"]
        device = self.alpha_bar.device
        return torch.randn(n, c, height or s, width or s, device=device, generator=gen)

    @torch.no_grad()
    def generate(self, n: int, gen: torch.Generator, condition: Condition = None) -> Tensor:
        """`n` images in [-1, 1] by the model's sampler (of classes `condition`), its noise from
        `gen`; from image conditions of any size, padded to whole multiples of the size it was
        trained on (which its network takes) and cut back (`padded`)."""
        if self.condition.kind != "image" or condition is None:
            return self.solve(self._noise(n, gen), condition, gen)[0]

        def make(c: Tensor) -> Tensor:
            noise = self._noise(len(c), gen, c.shape[-2] * self.scale, c.shape[-1] * self.scale)
            return self.solve(noise, c, gen)[0]

        return padded(make, condition, self.condition.shape[-1], self.scale)

    def interpolation_solver(self) -> Solver:
        """The solver that maps noise to images deterministically (the probability-flow ODE): the
        model's sampler, or for a stochastic one DDIM with eta 0 in as many steps."""
        if self.sampler.deterministic:
            return self.sampler
        steps = self.sampler.steps_for(self.noise_schedule.config)
        return DDIM(steps=steps, guidance=self.sampler.guidance, clip=self.sampler.clip)

    @torch.no_grad()
    def decode_latents(self, z: Tensor, condition: Condition = None) -> Tensor:
        """Images for flattened noise `z` (of classes `condition`) by the deterministic solver:
        nearby noise gives nearby images, so latents interpolate."""
        noise = z.view(len(z), self.shape["channels"], *[self.shape["image_size"]] * 2)
        return self.solve(noise, condition, None, self.interpolation_solver())[0]

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """An exported diffusion model samples: flattened noise (and labels) to images."""
        return self.decode_latents(z, labels)

    def fixed_inputs(self, num: int, examples: Batch, seed: int) -> GridInputs:
        """Noise (and labels: one row per class for a conditional model; held-out images and
        their conditions for an image-conditional one) for at most `grid_images` samples,
        reused at every grid."""
        num, device = min(num, self.grid_images), examples[0].device
        gen = torch.Generator(device=device).manual_seed(seed)
        if self.condition.kind == "image":
            images, conditions = examples
            num = paired_count(num, len(images))
            noise = self._noise(num, gen).to(device)
            return GridInputs(noise, conditions[:num], real=images[:num], seed=seed)
        labels = class_rows(self.num_classes, num, device)
        num = num if labels is None else len(labels)
        return GridInputs(self._noise(num, gen).to(device), labels, seed=seed)

    @torch.no_grad()
    def sample_grids(self, fixed: GridInputs) -> dict[str, Tensor]:
        """The samples, and the denoising trajectory of the first images (a row per timestep,
        from noise to the result)."""
        gen = torch.Generator(device=fixed.latents.device).manual_seed(fixed.seed)
        images, trajectory = self.solve(fixed.latents, fixed.condition, gen, keep=TRAJECTORY_ROWS)
        nrow = row_length(len(images), self.num_classes)
        if fixed.real is not None:  # an image condition: conditions, outputs and targets
            grid, nrow = paired_grid(fixed.condition, images.clamp(-1, 1), fixed.real), 8
        else:
            grid = to_grid(images, nrow)
        return {"samples": grid, "trajectory": _trajectory_grid(trajectory, nrow)}

    def sample_mode(
        self, mode: str, sampler: SampleSettings, gen: torch.Generator, real: Callable
    ) -> tuple[Iterator[Tensor], int]:
        """`trajectory`: `sampler.num_images` images (at most a row of 16), a row per timestep
        from noise to the result."""
        if self.condition.kind == "image":
            raise ValueError(
                "sampler.mode=trajectory draws from noise alone; this model generates from "
                "images (genlab sample input=FOLDER)"
            )
        n = min(sampler.num_images, 16)
        labels = sampler.labels(self, n, self.alpha_bar.device)
        n = n if labels is None else len(labels)
        _, trajectory = self.solve(self._noise(n, gen), labels, gen, keep=TRAJECTORY_ROWS)
        rows = torch.cat([x.clamp(-1, 1).cpu() for _, x in trajectory])
        return iter([rows]), n

    def sampling_protocol(self) -> dict[str, Any]:
        """The solver, its steps and guidance."""
        return self.sampler.protocol(self.noise_schedule.config)

    def export_sampler(self, node: DictConfig) -> Exported:
        """The model without its EMA, holding the sampling network's weights: its `forward` maps
        noise to images with the deterministic solver."""
        built = standalone_node(node, **self.shape, num_classes=self.num_classes)
        if self.condition.shape is not None:
            built["condition_shape"] = list(self.condition.shape)
        built.update(ema_decay=None, init_from=None, freeze=[])
        built.pop("objective", None)  # it samples only
        exported = nn.Module()  # the state_dict keys of a model without EMA
        exported.network = self.sampling_network()
        exported.register_buffer("updates", self.updates)
        return Exported(exported, built, "image", self._write_pipeline, PIPELINE)

    def _write_pipeline(self, outputs: Outputs, folder: str) -> str:
        """A diffusers `DDPMPipeline` in `folder/diffusers` for a U-Net: the sampling network and
        the training schedule, loadable offline with `DDPMPipeline.from_pretrained`. It is
        written beside, then replaces the pipeline genlab wrote there before."""
        unet = getattr(self.sampling_network(), "unet", None)
        if self.condition.kind == "image":
            return (
                "No diffusers pipeline: DDPMPipeline does not take an image condition (genlab's "
                "export above samples it: load_generator(folder)(z, conditions))."
            )
        if not isinstance(unet, UNet2DModel):
            return (
                "No diffusers pipeline: diffusers has no class for this network (genlab's "
                "export above samples it)."
            )
        target = join(folder, PIPELINE)
        tmp = outputs.folder(join(folder, temporary_name(PIPELINE)))
        try:
            scheduler = DDPMScheduler.from_config(self.noise_schedule.config)
            pipe = DDPMPipeline(unet=copy.deepcopy(unet).eval(), scheduler=scheduler)
            with writing(outputs.path(target)):
                pipe.save_pretrained(tmp)
                as_the_user_makes(tmp)  # diffusers writes its weights 0600
            written = [p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file()]
            outputs.record(f"{target}/{p}" for p in written)
            outputs.clear(below=target)  # the earlier pipeline, all genlab's (checked first)
            outputs.rename(tmp.relative_to(outputs.root).as_posix(), target)
        finally:
            if tmp.is_dir():
                shutil.rmtree(tmp)
        target = outputs.path(target)
        note = ""
        if self.num_classes:
            note = (
                f" (class-conditional: DDPMPipeline passes no labels; sample with "
                f"pipe.unet(x, t, class_labels=labels), label {self.num_classes} unconditional)"
            )
        return (
            f"Wrote {target}: from diffusers import DDPMPipeline; "
            f"pipe = DDPMPipeline.from_pretrained({str(target)!r}){note}"
        )

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


def _trajectory_grid(trajectory: list[tuple[int, Tensor]], nrow: int) -> Tensor:
    """A row per kept timestep of the first `nrow` images."""
    return to_grid(torch.cat([x[:nrow].clamp(-1, 1) for _, x in trajectory]), nrow)
