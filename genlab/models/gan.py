"""The GAN family: a generator and a discriminator trained adversarially.

`model=gan`, `model=cgan` and `model=dcgan` are all this class with different networks; the
networks arrive as partially built callables and receive the data set's shape here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.nn.utils import parametrizations, parametrize

from genlab.data.loader import Batch
from genlab.distributed import mean_over_ranks
from genlab.ema import EMA
from genlab.images import to_grid
from genlab.losses import (
    AdversarialLoss,
    gradient_penalty,
    lecam_penalty,
    squared_gradient_norm,
    top_k,
)
from genlab.models.base import Condition, Exported, Family, GridInputs, standalone_node
from genlab.models.common import class_rows, conditional_classes, eval_mode, row_length
from genlab.optim import OptimizerSpec, Updater

log = logging.getLogger(__name__)

COLLAPSE_WARNING = 0.2  # generated batch diversity below this fraction of the real one


class GAN(Family):
    """A generator and a discriminator trained adversarially by `objective` (the loss group:
    bce, hinge, lsgan, wgan_gp); with `conditional`, both take class labels. `ema_decay`
    samples from an exponential moving average of G (from `ema_start` generator updates on).
    `spectral_norm` names the networks whose convolution and linear weights are spectrally
    normalized."""

    roles: ClassVar[dict[str, str]] = {"g": "generator", "d": "discriminator"}
    conditions: ClassVar[frozenset[str]] = frozenset({"none", "labels"})
    abilities: ClassVar[frozenset[str]] = frozenset({"interpolate"})
    # the discriminator step runs the wrapped D; the generator step runs the wrapped G through
    # the plain D, whose weights it does not update, so no gradient sync waits on a network
    # without a backward pass
    replicated: ClassVar[tuple[str, ...]] = ("generator", "discriminator")

    def __init__(
        self,
        generator: Callable[..., nn.Module],
        discriminator: Callable[..., nn.Module],
        objective: AdversarialLoss,
        latent_dim: int = 100,
        conditional: bool = False,
        ema_decay: float | None = None,
        ema_start: int = 0,
        spectral_norm: Sequence[str] = (),
        init_from: str | None = None,
        freeze: Sequence[str] = (),
        *,
        channels: int,
        image_size: int,
        num_classes: int | None = None,
    ) -> None:
        classes = conditional_classes(conditional, num_classes, "GAN")
        super().__init__(latent_dim, classes, channels, image_size)
        shape = dict(self.shape)
        self.generator = generator(latent_dim=latent_dim, num_classes=classes, **shape)
        self.discriminator = discriminator(num_classes=classes, **shape)
        for name in spectral_norm:
            if name not in ("generator", "discriminator"):
                raise ValueError(
                    f"spectral_norm: {name!r} is not a network of this model; "
                    "networks: generator, discriminator"
                )
            apply_spectral_norm(getattr(self, name))
        if objective.input_gradients and any(
            isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d) for m in self.discriminator.modules()
        ):
            raise ValueError(
                "gradient penalties (loss.gp_weight, loss.r1, loss.r2) need a discriminator "
                "without BatchNorm: set model.discriminator.norm=layer (or none)"
            )
        self.objective = objective
        # LeCam's moving averages of D's mean output on real and on generated images
        self.register_buffer("lecam_anchors", torch.zeros(2))
        self.finish(init_from, freeze)
        # samples come from this average of G (weights and BatchNorm statistics) when set
        self.generator_ema = None
        if ema_decay is not None:
            self.generator_ema = EMA(self.generator, ema_decay, ema_start)
        self.register_buffer("generator_updates", torch.zeros((), dtype=torch.long))
        self._host_updates: int | None = None  # its copy on the host, see `_updates_so_far`
        self.d_input: Callable[[Tensor], Tensor] = _identity  # DiffAugment, see `set_augment`
        self._d_params: list[nn.Parameter] = []  # D's parameters, listed at the first step

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        """Checkpoints from before LeCam regularization lack its averages: they start at 0."""
        key = f"{prefix}lecam_anchors"
        if any(k.startswith(prefix) for k in state_dict):
            state_dict.setdefault(key, torch.zeros(2))
        super()._load_from_state_dict(state_dict, prefix, *args)
        self._host_updates = None  # read the loaded count again

    def _updates_so_far(self) -> int:
        """Generator updates so far, counted on the host: the buffer (on the device, saved in
        checkpoints) is read once after building or loading, a host sync, and never again."""
        if self._host_updates is None:
            self._host_updates = int(self.generator_updates)
        return self._host_updates

    # --- wiring ---------------------------------------------------------------------------------

    def configure_optimizers(self, spec: OptimizerSpec) -> dict[str, torch.optim.Optimizer]:
        """`optimizer.lr` for G, `optimizer.d_lr` (or lr) for D."""
        return {
            "g": spec(self.generator.parameters()),
            "d": spec(self.discriminator.parameters(), spec.d_lr),
        }

    def batches_per_step(self) -> int:
        return self.objective.n_critic

    # --- training -------------------------------------------------------------------------------

    def noise(self, n: int, device: torch.device, gen: torch.Generator | None = None):
        return torch.randn(n, self.latent_dim, device=device, generator=gen)

    def _labels(self, labels: Tensor | None) -> Tensor | None:
        return labels if self.num_classes else None

    def set_augment(self, augment) -> None:
        """Apply `augment.discriminator_input` (DiffAugment) to every image D sees."""
        self.d_input = augment.discriminator_input

    def compile_targets(self) -> list[nn.Module]:
        """Networks that `torch.compile` can take (not a critic under a gradient penalty's double
        backward, which compiled autograd does not support)."""
        if self.objective.input_gradients:
            return [self.generator]
        return [self.generator, self.discriminator]

    def train_step(
        self, batches: Iterator[Batch], update: Updater, metrics: bool = True
    ) -> dict[str, Tensor]:
        """`n_critic` discriminator updates on fresh batches, then one generator update through
        the last critic step's fakes (one generator forward pass per step, as in the PyTorch
        DCGAN example). The losses are returned as tensors (no host sync); `metrics` adds the
        gradient norms, scores and diversity, which cost a few kernels."""
        G, D, loss = self.generator, self.discriminator, self.objective
        train_g, train_d = self.trained("generator"), self.trained("discriminator")
        values: dict[str, Tensor] = {}
        for i in range(loss.n_critic):
            real, labels = next(batches)
            labels = self._labels(labels)
            # lazy regularization: R1 / R2 on every `reg_every`-th discriminator step
            regularize = loss.reg_every == 1 or (
                (self._updates_so_far() * loss.n_critic + i) % loss.reg_every == 0
            )
            with update.autocast():
                z = self.noise(len(real), real.device)
                if i == loss.n_critic - 1:
                    fake = train_g(z, labels)  # its graph is kept for the generator update
                else:
                    with torch.no_grad():
                        fake = G(z, labels)
                real_in = real.detach().requires_grad_(bool(loss.r1) and regularize)
                fake_in = fake.detach().requires_grad_(bool(loss.r2) and regularize)
                real_out = train_d(self.d_input(real_in), labels)
                fake_out = train_d(self.d_input(fake_in), labels)
                d_loss = loss.d_loss(real_out, fake_out)
                d_loss = d_loss + self._regularizers(
                    loss, update, train_d, values, real_in, fake_in, real_out, fake_out, labels
                )
            d_norm = update(d_loss, "d", measure=metrics)

        # The generator step needs no discriminator weight gradients; frozen parts stay frozen.
        d_params = self._d_params = self._d_params or list(D.parameters())
        trainable = [p.requires_grad for p in d_params]
        for p in d_params:
            p.requires_grad_(False)
        try:
            with update.autocast():
                fake_scores = D(self.d_input(fake), labels)
                if loss.top_k_min < 1:  # the epoch of the batches, where the loader says it
                    fraction = loss.top_k_fraction(getattr(batches, "epoch", 0))
                    fake_scores = top_k(fake_scores, fraction)
                g_loss = loss.g_loss(fake_scores)
            g_norm = update(g_loss, "g", measure=metrics)
        finally:
            for p, flag in zip(d_params, trainable, strict=True):
                p.requires_grad_(flag)
        self.generator_updates += 1
        if self._host_updates is not None:
            self._host_updates += 1
        if self.generator_ema is not None:
            self.generator_ema.update(self.generator, self.generator_updates)

        values.update({"loss/d": d_loss.detach(), "loss/g": g_loss.detach()})
        if metrics:
            values.update(
                {
                    "grad_norm/d": d_norm,
                    "grad_norm/g": g_norm,
                    # the GAN's diagnostics, one TensorBoard section
                    "gan/D(x)": loss.score(real_out.detach().float()).mean(),
                    "gan/D(G(z))": loss.score(fake_out.detach().float()).mean(),
                    "gan/diversity": diversity(fake[:16].detach(), real[:16]),
                }
            )
        return values

    def _regularizers(
        self,
        loss: AdversarialLoss,
        update: Updater,
        train_d: nn.Module,
        values: dict[str, Tensor],
        real: Tensor,
        fake: Tensor,
        real_out: Tensor,
        fake_out: Tensor,
        labels: Tensor | None,
    ) -> Tensor | float:
        """The discriminator's penalties on this step (their values go to `values`): WGAN-GP's;
        R1 / R2 (gamma / 2, times `reg_every` on the steps they run) through the gradients of
        the outputs already computed; LeCam against moving averages updated first."""
        total: Tensor | float = 0.0
        scale = update.loss_scale("d")
        if loss.gp_weight:
            gp = gradient_penalty(train_d, real, fake, labels, scale)
            total = total + loss.gp_weight * gp
            values["loss/gp"] = gp.detach()
        for name, weight, inputs, out in (
            ("r1", loss.r1, real, real_out),
            ("r2", loss.r2, fake, fake_out),
        ):
            if weight and inputs.requires_grad:
                penalty = squared_gradient_norm(out, inputs, scale)
                total = total + weight / 2 * loss.reg_every * penalty
                values[f"loss/{name}"] = penalty.detach()
        if loss.lecam:
            means = torch.stack(
                [real_out.detach().float().mean(), fake_out.detach().float().mean()]
            )
            self.lecam_anchors.lerp_(mean_over_ranks(means), 1 - loss.lecam_decay)
            anchor_real, anchor_fake = self.lecam_anchors
            penalty = lecam_penalty(real_out.float(), fake_out.float(), anchor_real, anchor_fake)
            total = total + loss.lecam * penalty
            values["loss/lecam"] = penalty.detach()
        return total

    def on_log(self, values: dict[str, float], step: int) -> None:
        if values.get("gan/diversity", 1.0) < COLLAPSE_WARNING:
            log.warning(
                "step %d: generated images are %.2f as diverse as real ones: the generator may "
                "be collapsing to a few modes",
                step,
                values["gan/diversity"],
            )

    # --- sampling -------------------------------------------------------------------------------

    def fixed_inputs(self, num: int, examples: Batch, seed: int) -> GridInputs:
        """Noise (and labels: one row per class for a conditional GAN) reused at every grid."""
        device = examples[0].device
        labels = class_rows(self.num_classes, num, device)
        num = num if labels is None else len(labels)
        gen = torch.Generator(device=device).manual_seed(seed)
        return GridInputs(self.noise(num, device, gen), labels)

    def sampling_generator(self) -> nn.Module:
        """The generator that samples: its EMA once averaging has begun, else itself."""
        ema = self.generator_ema
        return self.generator if ema is None else ema.or_network(self.generator)

    @torch.no_grad()
    def generate(self, n: int, gen: torch.Generator, condition: Condition = None) -> Tensor:
        """`n` images in [-1, 1] (of classes `condition`) from the sampling generator (its EMA
        when enabled)."""
        z = self.noise(n, next(self.parameters()).device, gen)
        with eval_mode(self):
            return self.decode_latents(z, condition)

    def decode_latents(self, z: Tensor, condition: Condition = None) -> Tensor:
        """Images for given latents (of classes `condition`) from the sampling generator."""
        return self.sampling_generator()(z, self._labels(condition))

    @torch.no_grad()
    def sample_grids(self, fixed: GridInputs) -> dict[str, Tensor]:
        with eval_mode(self):
            images = self.sampling_generator()(fixed.latents, fixed.condition)
        return {"samples": to_grid(images, row_length(len(images), self.num_classes))}

    def export_sampler(self, node: DictConfig) -> Exported:
        """The generator (its EMA when there is one), which maps latents and labels to images."""
        shape = {**self.shape, "num_classes": self.num_classes, "latent_dim": self.latent_dim}
        built = standalone_node(node.generator, **shape)
        return Exported(plain_copy(self.sampling_generator(), built), built, "image")


def apply_spectral_norm(network: nn.Module) -> None:
    """Spectral normalization (Miyato et al. 2018) of every convolution and linear weight of
    `network`: W / sigma(W), sigma estimated by one power iteration per training forward pass
    (its vectors are buffers: checkpointed, so resume stays exact)."""
    for module in list(network.modules()):
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            parametrizations.spectral_norm(module)


def plain_copy(network: nn.Module, node: dict[str, Any]) -> nn.Module:
    """`network`, or, when some of its weights are parametrized (spectral norm), the network
    `node` builds without them, holding their current values (computed in eval mode, so no
    power iteration runs)."""
    if not any(parametrize.is_parametrized(m) for m in network.modules()):
        return network
    state = {k: v for k, v in network.state_dict().items() if ".parametrizations." not in k}
    with eval_mode(network), torch.no_grad():
        for name, module in network.named_modules():
            if parametrize.is_parametrized(module):
                for tensor in module.parametrizations:
                    state[f"{name}.{tensor}" if name else tensor] = getattr(module, tensor).clone()
    plain = instantiate(node)
    plain.load_state_dict(state)
    return plain.to(next(network.parameters()).device)


def diversity(fake: Tensor, real: Tensor) -> Tensor:
    """Mean pairwise distance within a generated batch over that within a real batch: near 1 for
    a generator that covers the data, near 0 when it collapses to a few images."""
    spread = torch.pdist(real.flatten(1).float()).mean().clamp_min(1e-8)
    return torch.pdist(fake.flatten(1).float()).mean() / spread


def _identity(x: Tensor) -> Tensor:
    return x
