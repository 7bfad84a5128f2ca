"""What the diffusion and flow families share: a network that a solver runs many times to turn
noise into an image, from nothing, from class labels (with classifier-free guidance) or from an
image condition (SR3: the condition, enlarged bicubically, beside the noisy image), sampled from
an exponential moving average of the network.

A family of this kind owns its training step (`train_step`: what it adds to the images and what
the network regresses), its solvers (`solve`, `interpolation_solver`, `sampling_protocol`) and
the scheduler its exported diffusers pipeline samples with (`pipeline_scheduler`);
`NoiseToImage` holds the rest of the contract, the pipeline's writing included.
"""

from __future__ import annotations

import copy
import logging
import shutil
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from genlab.ema import EMA
from genlab.errors import require_at_least, writing
from genlab.files import Outputs, as_the_user_makes, join, temporary_name
from genlab.images import enlarged, padded, paired_count, paired_grid, to_grid
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

log = logging.getLogger(__name__)

PIPELINE = "diffusers"  # the export's folder holding a diffusers pipeline
TRAJECTORY_ROWS = 8  # steps shown by the trajectory grid, the last one the result
# (x_t, t) -> the network's output at that time, guided
Denoiser = Callable[[Tensor, Tensor], Tensor]


class NoiseToImage(OneNetwork):
    """A `network` (x_t, t, labels) run by the solver `sampler` from noise to images. With
    `conditional`, labels are dropped to the null label with probability `label_dropout`, so
    the sampler's `guidance` can mix the conditional and unconditional outputs. `ema_decay`:
    samples come from an exponential moving average of the network (null: the network itself).
    Grids show at most `grid_images` images (each a solver run)."""

    roles: ClassVar[dict[str, str]] = {"model": "denoiser"}
    conditions: ClassVar[frozenset[str]] = frozenset({"none", "labels", "image"})
    sample_modes: ClassVar[frozenset[str]] = frozenset({"trajectory"})
    family: ClassVar[str]  # the family's name in messages

    def __init__(
        self,
        network: Callable[..., nn.Module],
        sampler: Any,
        conditional: bool,
        label_dropout: float,
        ema_decay: float | None,
        ema_start: int,
        grid_images: int,
        init_from: str | None,
        freeze: Sequence[str],
        *,
        channels: int,
        image_size: int,
        num_classes: int | None,
        condition_shape: Sequence[int] | None,
    ) -> None:
        require_at_least(1, grid_images=grid_images)
        if not 0 <= label_dropout < 1:
            raise ValueError(f"label_dropout must be in [0, 1), got {label_dropout}")
        if conditional and condition_shape is not None:
            raise ValueError(
                "model.conditional=true generates from class labels; with a condition= the model "
                "generates from images: choose one"
            )
        classes = conditional_classes(conditional, num_classes, self.family)
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
            # a likelihood would need each image's condition
            self.abilities = self.abilities - {"likelihood"}
        self.label_dropout, self.sampler, self.grid_images = label_dropout, sampler, grid_images
        self.network = network(num_classes=classes, **shape)
        self.finish(init_from, freeze)
        self.network_ema = None if ema_decay is None else EMA(self.network, ema_decay, ema_start)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def sampling_network(self) -> nn.Module:
        """The network that samples: its EMA once averaging has begun, else itself."""
        ema = self.network_ema
        return self.network if ema is None else ema.or_network(self.network)

    def starting_weights(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """A fine-tune starts from the network that sampled the run's images: its moving
        average where averaging had begun (the average then starts from it too)."""
        if not int(state.get("network_ema.n_averaged", 0)):
            return state
        prefix = "network_ema.module."
        averaged = {
            f"network.{k.removeprefix(prefix)}": v for k, v in state.items() if k.startswith(prefix)
        }
        log.info("model.init_from: the network starts from the run's moving average")
        return {k: averaged.get(k, v) for k, v in state.items()}

    # --- training -------------------------------------------------------------------------------

    def network_input(self, x_t: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """What the network sees in training beside the time: the noisy images (and, for an image
        condition, `labels` the conditions, enlarged beside them), and the labels (each dropped
        to the null label with probability `label_dropout`; None for an unconditional model)."""
        if self.condition.kind == "image":
            return torch.cat([x_t, enlarged(labels, self.scale)], 1), None
        if not self.num_classes:
            return x_t, None
        dropped = torch.rand(len(x_t), device=x_t.device) < self.label_dropout
        return x_t, torch.where(dropped, self.num_classes, labels)

    def stepped(self, loss: str, value: Tensor, norm: Tensor, metrics: bool) -> dict[str, Tensor]:
        """After an update: count it, move the network's moving average, and return the step's
        values (`loss/<loss>`, and the gradient norm where `metrics`)."""
        self.updates += 1
        if self.network_ema is not None:
            self.network_ema.update(self.network, self.updates)
        values = {f"loss/{loss}": value.detach()}
        if metrics:
            values["grad_norm/model"] = norm
        return values

    # --- sampling -------------------------------------------------------------------------------

    def denoiser(
        self, labels: Tensor | None, guidance: float, net: nn.Module | None = None
    ) -> Denoiser:
        """(x_t, t) -> the output of `net` (the sampling network by default), with
        classifier-free guidance: the unconditional output + `guidance` * (conditional -
        unconditional); for an image condition (`labels`: the conditions), the noisy image beside
        its enlarged condition."""
        net = self.sampling_network() if net is None else net
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
        solver: Any = None,
        keep: int = 0,
    ) -> tuple[Tensor, list[tuple[Any, Tensor]]]:
        """Images from noise by `solver` (the model's sampler by default), in eval mode, and
        `keep` evenly spaced (time, x_t) pairs of the trajectory ending with the result."""
        solver = solver or self.sampler
        if self.condition.kind != "none" and labels is None:
            raise ValueError(f"this {self.family} generates from {self.condition.describe()}")
        labels = labels if self.condition.kind != "none" else None
        with eval_mode(self):
            return self.run_solver(solver, self.denoiser(labels, solver.guidance), noise, gen, keep)

    def run_solver(
        self, solver: Any, denoise: Denoiser, noise: Tensor, gen: torch.Generator | None, keep: int
    ) -> tuple[Tensor, list[tuple[Any, Tensor]]]:
        """The family's solver from `noise` with the guided network `denoise`."""
        raise NotImplementedError

    def interpolation_solver(self) -> Any:
        """The solver that maps noise to images deterministically."""
        raise NotImplementedError

    def _noise(self, n: int, gen: torch.Generator | None, height: int = 0, width: int = 0):
        c, s = self.shape["channels"], self.shape["image_size"]
        device = self.updates.device
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

    @torch.no_grad()
    def decode_latents(self, z: Tensor, condition: Condition = None) -> Tensor:
        """Images for flattened noise `z` (of classes `condition`) by the deterministic solver:
        nearby noise gives nearby images, so latents interpolate."""
        noise = z.view(len(z), self.shape["channels"], *[self.shape["image_size"]] * 2)
        return self.solve(noise, condition, None, self.interpolation_solver())[0]

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """An exported model samples: flattened noise (and labels) to images."""
        return self.decode_latents(z, labels)

    def fixed_inputs(self, num: int, examples: Any, seed: int) -> GridInputs:
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
        """The samples, and the trajectory of the first images (a row per kept step, from noise
        to the result)."""
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
        """`trajectory`: `sampler.num_images` images (at most a row of 16), a row per kept step
        from noise to the result."""
        if self.condition.kind == "image":
            raise ValueError(
                "sampler.mode=trajectory draws from noise alone; this model generates from "
                "images (genlab sample input=FOLDER)"
            )
        n = min(sampler.num_images, 16)
        labels = sampler.labels(self, n, self.updates.device)
        n = n if labels is None else len(labels)
        _, trajectory = self.solve(self._noise(n, gen), labels, gen, keep=TRAJECTORY_ROWS)
        rows = torch.cat([x.clamp(-1, 1).cpu() for _, x in trajectory])
        return iter([rows]), n

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

    def pipeline_scheduler(self) -> Any:
        """The diffusers scheduler that samples the exported U-Net in a `DDPMPipeline`."""
        raise NotImplementedError

    def _write_pipeline(self, outputs: Outputs, folder: str) -> str:
        """A diffusers `DDPMPipeline` in `folder/diffusers` for a U-Net: the sampling network and
        the family's scheduler (`pipeline_scheduler`), loadable offline with
        `DDPMPipeline.from_pretrained`. It is written beside, then replaces the pipeline genlab
        wrote there before. What was written, or why nothing was."""
        from diffusers import DDPMPipeline, UNet2DModel

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
            scheduler = self.pipeline_scheduler()
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
            f"pipe = DDPMPipeline.from_pretrained({str(target)!r}), sampling by "
            f"{type(scheduler).__name__}{note}"
        )


def _trajectory_grid(trajectory: list[tuple[Any, Tensor]], nrow: int) -> Tensor:
    """A row per kept step of the first `nrow` images."""
    return to_grid(torch.cat([x[:nrow].clamp(-1, 1) for _, x in trajectory]), nrow)
