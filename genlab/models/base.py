"""THE contract every model family implements: what the trainer, `genlab eval`, `sample`,
`export`, fine-tuning, DDP and the benchmark ask of a model, and nothing else.

A family is one module under `genlab/models/` (a subclass of `Family`) and one
`conf/model/*.yaml` whose `_target_` names it. `config.build_model` builds it with the data set's
shape (`channels`, `image_size`, `num_classes`) besides the yaml's keys. Abstract members are
required; optional abilities are declared in `abilities` (and their members overridden), and
asking a family for one it lacks is one clear error (`require`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from genlab.data.loader import Batch
from genlab.errors import require_at_least
from genlab.files import Outputs
from genlab.models import finetune
from genlab.optim import OptimizerSpec, Updater

# ability: what a model must do to have it (the end of "needs a model that ...")
ABILITIES = {
    "interpolate": "maps latents to images",  # decode_latents
    "reconstruct": "encodes images",  # reconstruct
    "likelihood": "has a likelihood",  # likelihood_metrics, likelihood_protocol
    "temperature": "samples at a temperature",  # sample_at_temperature
}


@dataclass
class Exported:
    """What `genlab export` writes for a family: the network that samples, the config node that
    builds it (allow-listed targets only), and how its output becomes an image in [-1, 1]
    (`export.OUTPUTS`: `image` as is, `sigmoid` then mapped, or `clamp`); `extra(outputs,
    folder)` writes more into the export folder `folder` of `outputs` (a diffusion model's
    diffusers pipeline, in its sub-folder `extra_folder`, which genlab checks before the export
    writes anything) and says what it wrote."""

    network: nn.Module
    node: dict[str, Any]
    output: str
    extra: Callable[[Outputs, str], str] | None = None
    extra_folder: str | None = None


class Family(nn.Module, ABC):
    """A model family. Subclasses set `roles` and `abilities`; their `__init__` calls
    `set_shape` (`latent_dim`, `num_classes`: 0 for an unconditional model, `shape`), builds the
    networks and ends with `finish(init_from, freeze)`."""

    roles: ClassVar[dict[str, str]]  # optimizer key -> the network's name in messages
    abilities: ClassVar[frozenset[str]] = frozenset()  # keys of ABILITIES
    sample_modes: ClassVar[frozenset[str]] = frozenset()  # `sampler.mode`s of its own

    latent_dim: int
    num_classes: int
    shape: dict[str, int]  # channels, image_size

    def set_shape(
        self, latent_dim: int, num_classes: int, channels: int, image_size: int
    ) -> dict[str, int]:
        """Set `latent_dim`, `num_classes` and `shape` (refusing a latent_dim below 1); return
        the shape as the networks' keyword arguments."""
        require_at_least(1, latent_dim=latent_dim)
        self.latent_dim, self.num_classes = latent_dim, num_classes
        self.shape = {"channels": channels, "image_size": image_size}
        return dict(self.shape)

    def finish(self, init_from: str | None, freeze: Sequence[str]) -> None:
        """Fine-tuning, once the networks exist: copy matching weights from a run or checkpoint
        (`model.init_from`), then stop training the named parts (`model.freeze`)."""
        self.replicas: dict[str, nn.Module] = {}  # training wrappers, see `distribute`
        if init_from:
            finetune.init_from(self, init_from)
        finetune.freeze(self, freeze)

    # --- training (the trainer) ------------------------------------------------------------------

    @abstractmethod
    def configure_optimizers(self, spec: OptimizerSpec) -> dict[str, torch.optim.Optimizer]:
        """One optimizer per key of `roles`, built by `spec` (`optimizer.lr`; a second network
        may take `spec.d_lr`)."""

    def batches_per_step(self) -> int:
        """Batches one `train_step` takes from the loader."""
        return 1

    @abstractmethod
    def train_step(
        self, batches: Iterator[Batch], update: Updater, metrics: bool = True
    ) -> dict[str, Tensor]:
        """One step of the family's objective: batches from `batches`, every update through
        `update(loss, role)`; returns
        values to log as tensors (no host sync), with the costlier ones only if `metrics`."""

    def on_log(self, values: dict[str, float], step: int) -> None:
        """Look at the logged values of a logging step (e.g. warn of a collapse)."""

    def compile_targets(self) -> list[nn.Module]:
        """The networks `trainer.compile` compiles in place."""
        return [m for m in self.children() if any(True for _ in m.parameters())]

    def distribute(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        """Train through `wrap`ped networks (DistributedDataParallel): by default the whole model
        is wrapped once, and `train_step` runs `self.replicas.get("model", self)`."""
        self.replicas["model"] = wrap(self)

    def set_augment(self, augment: Any) -> None:
        """Apply an augmentation policy to what the family's networks see (`augment.diff`)."""
        raise ValueError(
            "DiffAugment (augment.diff) is for GANs; this model takes data augmentation "
            "(augment=basic)"
        )

    # --- sampling (grids, genlab eval and sample) ------------------------------------------------

    @abstractmethod
    def fixed_inputs(self, num: int, examples: Batch, seed: int) -> dict[str, Tensor | None]:
        """What every sample grid of a run reuses (noise, labels, real `examples`)."""

    @abstractmethod
    def sample_grids(self, fixed: dict[str, Tensor | None]) -> dict[str, Tensor]:
        """Named (C, H, W) grids in [0, 1] from `fixed`, in eval mode."""

    @abstractmethod
    def generate(self, n: int, generator: torch.Generator, labels: Tensor | None = None) -> Tensor:
        """`n` images in [-1, 1] (of class `labels` for a conditional model), drawing only from
        `generator`, in eval mode."""

    @abstractmethod
    def export_sampler(self, node: DictConfig) -> Exported:
        """What `genlab export` writes: the network that samples, from this run's `model` node."""

    def sample_mode(
        self, mode: str, sampler: Any, generator: torch.Generator, real: Callable
    ) -> tuple[Iterator[Tensor], int]:
        """A `sampler.mode` of the family's own (one of `sample_modes`): batches of at most
        `sampler.batch_size` images in [-1, 1] on the CPU, drawing from `generator` (or from
        the held-out data set `real()`: `.images` uint8, `.labels`), and how many images go in a
        grid row."""
        raise NotImplementedError

    def sampling_protocol(self) -> dict[str, Any]:
        """How `generate` makes images beyond the seed (a diffusion model's solver and steps),
        written beside every metric."""
        return {}

    # --- abilities ----------------------------------------------------------------------------

    def decode_latents(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """`interpolate`: images in [-1, 1] for latents (`latent_dim` wide)."""
        raise NotImplementedError

    def reconstruct(self, images: Tensor) -> Tensor:
        """`reconstruct`: images in [-1, 1] rebuilt from their encoding, in eval mode."""
        raise NotImplementedError

    def sample_at_temperature(
        self,
        n: int,
        generator: torch.Generator,
        labels: Tensor | None,
        temperature: float,
    ) -> Tensor:
        """`temperature`: `generate` with every sampled distribution sharpened (< 1) or
        flattened (> 1)."""
        raise NotImplementedError

    def likelihood_metrics(self, images: Tensor, k: int, seed: int) -> dict[str, float]:
        """`likelihood`: per-image means on `images` (in [-1, 1]), nats and bits per dimension;
        `k` samples where the family estimates (importance samples, a diffusion bound's
        timesteps; 0: the cheap metrics only, or none)."""
        raise NotImplementedError

    def likelihood_protocol(self, k: int) -> dict[str, Any]:
        """`likelihood`: how those numbers were measured, written beside them."""
        raise NotImplementedError


class OneNetwork(Family):
    """A family that trains one network, `self.network`, with one optimizer (role `model`):
    diffusion, PixelCNN. Its optimizer, compile target and DDP wrapper are that network's."""

    network: nn.Module

    def configure_optimizers(self, spec: OptimizerSpec) -> dict[str, torch.optim.Optimizer]:
        return {"model": spec(self.network.parameters())}

    def compile_targets(self) -> list[nn.Module]:
        return [self.network]

    def distribute(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        """`train_step` runs `self.replicas.get("network", self.network)`."""
        self.replicas["network"] = wrap(self.network)


def complete(node: DictConfig, **kwargs: Any) -> dict[str, Any]:
    """A network's partial config node (`_partial_: true`, as families take their networks) as a
    node that builds it alone, with the arguments the family passes it (`kwargs`)."""
    built = OmegaConf.to_container(node, resolve=True)
    built.pop("_partial_", None)
    return {**built, **kwargs}


def require(model: Family, ability: str, setting: str) -> None:
    """Refuse `setting` (e.g. `sampler.mode=reconstruct`) for a model without `ability`."""
    if ability not in model.abilities:
        name = type(model).__name__
        raise ValueError(f"{setting} needs a model that {ABILITIES[ability]}; {name} does not")
