"""THE contract every model family implements: what the trainer, `genlab eval`, `sample`,
`export`, fine-tuning, DDP and the benchmark ask of a model, and nothing else.

A family is one module under `genlab/models/` (a subclass of `Family`) and one
`conf/model/*.yaml` whose `_target_` names it. `config.build_model` builds it with the data set's
shape (`channels`, `image_size`, `num_classes`) besides the yaml's keys. Abstract members are
required; optional abilities are declared in `abilities` (and their members overridden), and
asking a family for one it lacks is one clear error (`require`).
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from genlab.data.loader import Batch
from genlab.errors import GenlabError, require_at_least
from genlab.files import Outputs
from genlab.models import finetune
from genlab.optim import OptimizerSpec, Updater

# ability: what a model must do to have it (the end of "needs a model that ...")
ABILITIES = {
    "interpolate": "maps latents to images",  # decode_latents
    "reconstruct": "encodes images",  # reconstruct
    "likelihood": "has a likelihood",  # likelihood
    "temperature": "samples at a temperature",  # sample_at_temperature
}


# What a model generates from: nothing (None), class labels ((N,) int64) or images ((N, C, h, w) in
# [-1, 1], of the shape `Family.condition` states). `Family.condition` says which.
Condition = Tensor | None
ConditionKind = Literal["none", "labels", "image"]


@dataclass(frozen=True)
class ConditionSpec:
    """What a built model generates from: `kind`, the `classes` of labels, the (C, h, w) `shape`
    of images (made by a degradation of the `condition` group from the data set's images)."""

    kind: ConditionKind = "none"
    classes: int = 0
    shape: tuple[int, int, int] | None = None

    def describe(self) -> str:
        if self.kind == "labels":
            return f"labels of {self.classes} classes"
        if self.kind == "image":
            return "images of shape " + "x".join(map(str, self.shape or ()))
        return "nothing"


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


class SampleSettings(Protocol):
    """What a family's own `sampler.mode` reads of `genlab sample`'s settings (`sampler.*`)."""

    num_images: int
    batch_size: int
    temperature: float | None

    def labels(self, model: Family, n: int, device: torch.device) -> Tensor | None:
        """The classes of `n` images for a class-conditional model (`sampler.label`, or a row per
        class), None for another."""
        ...


@dataclass
class GridInputs:
    """What every sample grid of a run reuses (`Family.fixed_inputs`), made once from its seed:
    the grids of two steps differ only by the training between them."""

    latents: Tensor  # of the samples: noise, latent codes
    condition: Condition = None  # the samples' (labels: a row per class; images)
    real: Tensor | None = None  # held-out images shown with what the model makes of them
    real_latents: Tensor | None = None  # the noise that completes `real` (PixelCNN)
    real_labels: Tensor | None = None  # `real`'s classes
    seed: int = 0  # of the sampler's own draws while it makes the grid (ancestral noise)


class Family(nn.Module, ABC):
    """A model family. Subclasses set `roles` (and `abilities`, `sample_modes`, `replicated`,
    `conditions` where they differ from the defaults); their `__init__` starts with
    `super().__init__(latent_dim, num_classes, channels, image_size)` (and `condition_shape`,
    for a family that generates from an image), builds the networks and ends with
    `self.finish(init_from, freeze)`: an `__init__` that does not is refused."""

    roles: ClassVar[dict[str, str]]  # optimizer key -> the network's name in messages
    abilities: ClassVar[frozenset[str]] = frozenset()  # keys of ABILITIES
    sample_modes: ClassVar[frozenset[str]] = frozenset()  # `sampler.mode`s of its own
    # the networks (attribute names; "" the whole model) that DDP wraps, run through `trained`
    replicated: ClassVar[tuple[str, ...]] = ("",)
    # the kinds of condition it can be built for (`ConditionKind`s)
    conditions: ClassVar[frozenset[str]] = frozenset({"none"})

    # the width of the latents it samples from (C*H*W noise for diffusion, PixelCNN; 0 for a
    # family that draws nothing beyond its image condition)
    latent_dim: int
    num_classes: int  # 0 for a model that takes no class labels
    shape: dict[str, int]  # channels, image_size: the networks' keyword arguments
    condition: ConditionSpec  # what it generates from

    def __init__(
        self,
        latent_dim: int,
        num_classes: int,
        channels: int,
        image_size: int,
        condition_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        # 0: nothing drawn beyond the condition, which only an image condition leaves possible
        require_at_least(1 if condition_shape is None else 0, latent_dim=latent_dim)
        self.latent_dim, self.num_classes = latent_dim, num_classes
        self.shape = {"channels": channels, "image_size": image_size}
        if condition_shape is not None:
            shape = tuple(int(s) for s in condition_shape)
            self.condition = ConditionSpec("image", shape=shape)  # type: ignore[arg-type]
        else:
            self.condition = ConditionSpec("labels" if num_classes else "none", num_classes)
        if self.condition.kind not in self.conditions:
            raise ValueError(unfit(type(self), self.condition.kind))
        self._replicas: dict[str, nn.Module] = {}  # DDP wrappers (`distribute`)
        self._ran: set[str] = set()  # the wrappers a step ran (`check_replicas`)
        self._finished = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """The order of construction, held by the base class: an `__init__` that returns
        without `finish` is refused, naming the family."""
        super().__init_subclass__(**kwargs)
        if "__init__" not in cls.__dict__:
            return
        init = cls.__init__

        @functools.wraps(init)
        def checked(self: Family, *args: Any, **kw: Any) -> None:
            init(self, *args, **kw)
            if type(self) is cls and not self.__dict__.get("_finished"):
                raise TypeError(
                    f"{cls.__name__}.__init__ must end with self.finish(init_from, freeze), once "
                    "its networks exist (genlab.models.base.Family)"
                )

        cls.__init__ = checked  # type: ignore[method-assign]

    def finish(self, init_from: str | None, freeze: Sequence[str]) -> None:
        """Fine-tuning, once the networks exist: copy matching weights from a run or checkpoint
        (`model.init_from`), then stop training the named parts (`model.freeze`)."""
        if "shape" not in self.__dict__:
            raise TypeError(
                f"{type(self).__name__}.__init__ must start with super().__init__(latent_dim, "
                "num_classes, channels, image_size)"
            )
        if init_from:
            finetune.init_from(self, init_from, self.starting_weights)
        finetune.freeze(self, freeze)
        self._finished = True

    def starting_weights(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """What `model.init_from` copies from another run's model `state`: the state itself
        (a family whose samples come from other weights than it trains says so)."""
        return state

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

    def trained(self, name: str = "") -> nn.Module:
        """The network `name` (one of `replicated`) as `train_step` runs it: its DDP wrapper
        under torchrun (which averages its gradients over the processes), else itself."""
        if name in self._replicas:
            return self._replicas[name]
        return self if name == "" else getattr(self, name)

    def set_augment(self, augment: Any) -> None:
        """Apply an augmentation policy to what the family's networks see (`augment.diff`)."""
        raise ValueError(
            "DiffAugment (augment.diff) is for GANs; this model takes data augmentation "
            "(augment=basic)"
        )

    # --- sampling (grids, genlab eval and sample) ------------------------------------------------

    @abstractmethod
    def fixed_inputs(self, num: int, examples: Batch, seed: int) -> GridInputs:
        """What every sample grid of a run reuses, for `num` images, from `seed` and held-out
        `examples`."""

    @abstractmethod
    def sample_grids(self, fixed: GridInputs) -> dict[str, Tensor]:
        """Named (C, H, W) grids in [0, 1] from `fixed`, in eval mode."""

    @abstractmethod
    def generate(self, n: int, gen: torch.Generator, condition: Condition = None) -> Tensor:
        """`n` images in [-1, 1] from `condition` (`n` of them: labels or images; None for a
        model that generates from nothing), drawing only from `gen`, in eval mode."""

    @abstractmethod
    def export_sampler(self, node: DictConfig) -> Exported:
        """What `genlab export` writes: the network that samples, from this run's `model` node."""

    def sample_mode(
        self, mode: str, sampler: SampleSettings, gen: torch.Generator, real: Callable
    ) -> tuple[Iterator[Tensor], int]:
        """A `sampler.mode` of the family's own (one of `sample_modes`): batches of at most
        `sampler.batch_size` images in [-1, 1] on the CPU, drawing from `gen` (or from
        the held-out data set `real()`: `.images` uint8, `.labels`), and how many images go in a
        grid row."""
        raise NotImplementedError

    def sampling_protocol(self) -> dict[str, Any]:
        """How `generate` makes images beyond the seed (a diffusion model's solver and steps),
        written beside every metric."""
        return {}

    # --- abilities ----------------------------------------------------------------------------

    def decode_latents(self, z: Tensor, condition: Condition = None) -> Tensor:
        """`interpolate`: images in [-1, 1] for latents (`latent_dim` wide)."""
        raise NotImplementedError

    def reconstruct(self, images: Tensor) -> Tensor:
        """`reconstruct`: images in [-1, 1] rebuilt from their encoding, in eval mode."""
        raise NotImplementedError

    def sample_at_temperature(
        self,
        n: int,
        gen: torch.Generator,
        condition: Condition,
        temperature: float,
    ) -> Tensor:
        """`temperature`: `generate` with every sampled distribution sharpened (< 1) or
        flattened (> 1)."""
        raise NotImplementedError

    def likelihood(self, images: Tensor, k: int, seed: int) -> tuple[dict[str, float], dict]:
        """`likelihood`: per-image means on `images` (in [-1, 1]), in nats and bits per
        dimension, and how they were measured; `k` samples where the family estimates
        (importance samples, a diffusion bound's timesteps; 0: the cheap metrics only, or
        none)."""
        raise NotImplementedError


class OneNetwork(Family):
    """A family that trains one network, `self.network`, with one optimizer (role `model`):
    diffusion, PixelCNN. Its optimizer, compile target and DDP wrapper are that network's."""

    network: nn.Module

    def configure_optimizers(self, spec: OptimizerSpec) -> dict[str, torch.optim.Optimizer]:
        return {"model": spec(self.network.parameters())}

    replicated: ClassVar[tuple[str, ...]] = ("network",)

    def compile_targets(self) -> list[nn.Module]:
        return [self.network]


def distribute(model: Family, wrap: Callable[[nn.Module], nn.Module]) -> None:
    """(The trainer, under torchrun.) Wrap each of the model's `replicated` networks with `wrap`
    (DistributedDataParallel) for `Family.trained` to return, noting each wrapper's forward."""
    for name in model.replicated:
        replica = wrap(model.trained(name))
        replica.register_forward_pre_hook(lambda *_, name=name: model._ran.add(name))
        model._replicas[name] = replica


def check_replicas(model: Family) -> None:
    """(The trainer, after the first step under torchrun.) Refuse a `train_step` that ran one of
    the `replicated` networks around its wrapper: its gradients were not averaged."""
    missed = [name for name in model.replicated if name not in model._ran]
    if missed:
        calls = ", ".join(f"self.trained({n!r})" if n else "self.trained()" for n in missed)
        raise GenlabError(
            f"{type(model).__name__}.train_step ran its networks without {calls}: under "
            "torchrun their gradients would not be averaged across the processes, and the "
            "copies would drift apart (see genlab/models/base.py, Family.trained)"
        )


def standalone_node(node: DictConfig, **kwargs: Any) -> dict[str, Any]:
    """A network's partial config node (`_partial_: true`, as families take their networks) as a
    node that builds it alone, with the arguments the family passes it (`kwargs`)."""
    built = OmegaConf.to_container(node, resolve=True)
    built.pop("_partial_", None)
    return {**built, **kwargs}


def unfit(family: type[Family], kind: str) -> str:
    """Why a family cannot be built for a condition of `kind` (the `condition` group's choice, or
    a model's `conditional`), which is not among its `conditions`."""
    takes = " or ".join(sorted(family.conditions))
    if kind == "image":
        return (
            f"{family.__name__} does not generate from an image (a condition= of the condition "
            f"group); it generates from {takes}"
        )
    if "image" in family.conditions and kind == "none":
        return (
            f"{family.__name__} generates from an image: choose what makes it from the data set's "
            "images, condition=lowres | mask | grey | noise"
        )
    return f"{family.__name__} does not take class labels; it generates from {takes}"


def require(model: Family, ability: str, setting: str) -> None:
    """Refuse `setting` (e.g. `sampler.mode=reconstruct`) for a model without `ability`."""
    if ability not in model.abilities:
        name = type(model).__name__
        raise ValueError(f"{setting} needs a model that {ABILITIES[ability]}; {name} does not")
