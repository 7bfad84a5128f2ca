"""Exported generators: safetensors weights plus a YAML config, loadable without the trainer.

from genlab.export import load_generator
g = load_generator("outputs/dcgan_mnist5k/<date>_<time>/export")
images = g(torch.randn(16, g.latent_dim))      # in [-1, 1]; cGAN: g(z, labels)
restored = g(None, degraded)                    # a model that generates from an image
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import Tensor, nn

from genlab.config import build
from genlab.errors import GenlabError
from genlab.files import Outputs, join
from genlab.models.base import Condition, ConditionSpec, Family
from genlab.trust import check_targets, read_config

# how an exported network's output becomes an image in [-1, 1]
OUTPUTS = {
    "image": lambda x: x,  # already one (a GAN's generator)
    "sigmoid": lambda x: torch.sigmoid(x) * 2 - 1,  # Bernoulli logits (a VAE's decoder)
    "clamp": lambda x: x.clamp(-1, 1),  # a Gaussian mean
}
# Exports written before genlab.models.base held the whole VAE and named its likelihood.
_OLD_OUTPUTS = {"bernoulli": "sigmoid", "gaussian": "clamp"}


class Generator(nn.Module):
    """Latents (`latent_dim` wide; None for a model that draws none) and the model's condition
    (`condition` says which: labels, images, or nothing) to images in [-1, 1]."""

    def __init__(
        self, network: nn.Module, latent_dim: int, condition: ConditionSpec, output: str
    ) -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
        self.network, self.latent_dim, self.condition, self.output = (
            network,
            latent_dim,
            condition,
            output,
        )
        self.num_classes = condition.classes

    @torch.no_grad()
    def forward(self, z: Tensor | None, condition: Condition = None) -> Tensor:
        if self.condition.kind != "none" and condition is None:
            raise ValueError(
                f"this generator generates from {self.condition.describe()}: pass them"
            )
        x = self.network(z) if self.condition.kind == "none" else self.network(z, condition)
        return OUTPUTS[self.output](x)


def export(
    model: Family, run_cfg: DictConfig, source: dict, out: Outputs, folder: str = ""
) -> list[str]:
    """Write the network that samples (`Family.export_sampler`: a GAN's generator, its EMA
    when there is one; a VAE's decoder; a diffusion model) and the config that builds it to the
    folder `folder` of `out`, and what the family writes besides; return what was written. Files
    there that genlab did not write are refused before anything is written."""
    exported = model.export_sampler(run_cfg.model)
    network, node, output = exported.network, exported.node, exported.output
    hint = "move it away, or export elsewhere with out=FOLDER"
    out.refuse_foreign([join(folder, f"generator.{x}") for x in ("safetensors", "yaml")], hint)
    if exported.extra_folder:
        out.check_clear(below=join(folder, exported.extra_folder), why="genlab export: ")
    tensors = {k: v.detach().contiguous().cpu() for k, v in network.state_dict().items()}
    out.write(join(folder, "generator.safetensors"), save(tensors))
    spec = {
        "network": node,
        "latent_dim": model.latent_dim,
        "num_classes": model.num_classes,
        "condition": {"kind": model.condition.kind, "shape": model.condition.shape},
        "output": output,
        "source": source,
    }
    out.write(join(folder, "generator.yaml"), OmegaConf.to_yaml(OmegaConf.create(spec)).encode())
    written = [f"{out.path(folder)}/generator.safetensors and generator.yaml"]
    if exported.extra is not None:
        written.append(exported.extra(out, folder))
    return written


def load_generator(
    folder: str | Path, device: str | torch.device = "cpu", trust_code: bool = False
) -> Generator:
    """The generator `genlab export` wrote to `folder`, in eval mode. An exported folder may come
    from anyone: its `generator.yaml` builds only the networks of genlab's own config tree
    (`genlab.trust`), unless `trust_code=True` (or `GENLAB_TRUSTED_TARGETS` names your package)."""
    folder = Path(folder)
    source = folder / "generator.yaml"
    try:
        text = source.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise GenlabError(f"{source} cannot be read ({e}): is {folder} a genlab export?") from None
    spec = read_config(text, str(source))
    if not isinstance(spec.get("network"), DictConfig):
        raise GenlabError(f"{source} names no network")
    if "solver" in spec.network:  # exported before the model node named it its sampler
        spec.network.sampler = spec.network.pop("solver")
    check_targets(spec.network, "network", str(source), trust_code)
    try:
        network = build(spec.network, "network")
        if not isinstance(network, nn.Module):
            raise TypeError(f"its network builds a {type(network).__name__}, not a torch module")
        network.load_state_dict(load_file(str(folder / "generator.safetensors")))
        output = spec.output
        if output in _OLD_OUTPUTS:  # an older export: the whole VAE, sampled by its decoder
            network, output = network.decoder, _OLD_OUTPUTS[output]
        g = Generator(network, int(spec.latent_dim), _condition(spec), output)
    except (OSError, RuntimeError, ValueError, TypeError, SafetensorError) as e:
        raise GenlabError(f"{folder} is not a loadable genlab export ({e})") from None
    return g.to(device).eval()


def _condition(spec: DictConfig) -> ConditionSpec:
    """What an export generates from (exports before the condition type: labels where it has
    classes)."""
    classes = int(spec.get("num_classes") or 0)
    stored = spec.get("condition") or {"kind": "labels" if classes else "none"}
    kind, shape = stored.get("kind"), stored.get("shape")
    if kind not in ("none", "labels", "image"):
        raise ValueError(f"condition.kind must be none, labels or image, got {kind!r}")
    return ConditionSpec(kind, classes, None if shape is None else tuple(int(s) for s in shape))
