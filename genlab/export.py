"""Exported generators: safetensors weights plus a YAML config, loadable without the trainer.

from genlab.export import load_generator
g = load_generator("outputs/dcgan_mnist5k/<date>_<time>/export")
images = g(torch.randn(16, g.latent_dim))      # in [-1, 1]; cGAN: g(z, labels)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

OUTPUTS = ("image", "bernoulli", "gaussian")  # network output -> image: as is, sigmoid, clamp


class Generator(nn.Module):
    """Latents (and labels for a conditional model) to images in [-1, 1]."""

    def __init__(self, network: nn.Module, latent_dim: int, num_classes: int, output: str) -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        self.network, self.latent_dim, self.num_classes, self.output = (
            network,
            latent_dim,
            num_classes,
            output,
        )

    @torch.no_grad()
    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.output == "image":
            return self.network(z, labels if self.num_classes else None)
        x = self.network.decoder(z)
        return torch.sigmoid(x) * 2 - 1 if self.output == "bernoulli" else x.clamp(-1, 1)


def _node(cfg: DictConfig, **kwargs: Any) -> dict[str, Any]:
    """A partial's config as a complete, instantiable node."""
    node = OmegaConf.to_container(cfg, resolve=True)
    node.pop("_partial_", None)
    node.pop("init_from", None)
    node.pop("freeze", None)
    return {**node, **kwargs}


def export(model: Any, loss: Any, run_cfg: DictConfig, source: dict, folder: Path) -> Path:
    """Write the sampling network (a GAN's EMA generator when there is one; a VAE's decoder
    through the whole VAE) and its config to `folder`."""
    shape = {**model.shape, "num_classes": model.num_classes}
    if hasattr(model, "sampler"):
        network = model.sampler()
        node = _node(run_cfg.model.generator, latent_dim=model.latent_dim, **shape)
        output = "image"
    else:
        network = model
        node = _node(run_cfg.model, **shape)
        output = loss.likelihood
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in network.state_dict().items()}
    save_file(tensors, str(folder / "generator.safetensors"))
    spec = {
        "network": node,
        "latent_dim": model.latent_dim,
        "num_classes": model.num_classes,
        "output": output,
        "source": source,
    }
    OmegaConf.save(OmegaConf.create(spec), folder / "generator.yaml")
    return folder


def load_generator(folder: str | Path, device: str | torch.device = "cpu") -> Generator:
    """The generator `genlab export` wrote to `folder`, in eval mode."""
    folder = Path(folder)
    spec = OmegaConf.load(folder / "generator.yaml")
    network = instantiate(spec.network)
    network.load_state_dict(load_file(str(folder / "generator.safetensors")))
    g = Generator(network, spec.latent_dim, spec.num_classes, spec.output)
    return g.to(device).eval()
