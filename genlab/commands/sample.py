"""`genlab sample run=PATH [overrides]`: sample grids (and files) from trained models."""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from genlab.commands.eval import load_run, run_folder
from genlab.config import CONF_DIR, build, check_config
from genlab.errors import ConfigError
from genlab.images import save_png, to_grid


def sample(cfg: DictConfig) -> Path:
    check_config(cfg, ("sampler", "device"))
    sampler = build(cfg.sampler, "sampler")
    device = build(cfg.device, "device")
    grids, first = [], None
    for run in [cfg.run, *cfg.runs]:
        model, loss, run_cfg, state = load_run(run, device)
        try:
            sampler.check(model)
        except ValueError as e:
            raise ConfigError(f"sampler: {e} ({run})") from None
        real = (
            build(run_cfg.dataset, "dataset", split="test").images
            if sampler.mode == "reconstruct"
            else None
        )
        images, nrow = sampler(model, loss, device, real)
        grids.append(to_grid(images, nrow))
        first = first or state
    out = (
        Path(cfg.out)
        if cfg.out
        else (
            run_folder(Path(first["path"])) / "samples" / f"{sampler.mode}_seed{sampler.seed}.png"
        )
    )
    grid = grids[0] if len(grids) == 1 else _side_by_side(grids)
    save_png(grid, out)
    if cfg.files:
        for i, image in enumerate(images):
            save_png(to_grid(image[None], 1)[:, 2:-2, 2:-2], out.with_suffix("") / f"{i:05d}.png")
    print(
        f"Wrote {out}"
        + (f" and {len(images)} images in {out.with_suffix('')}/" if cfg.files else "")
    )
    return out


def _side_by_side(grids: list[torch.Tensor]) -> torch.Tensor:
    """Grids of equal height in one image, with a white bar between them."""
    channels, height = max(g.shape[0] for g in grids), max(g.shape[1] for g in grids)
    bar = torch.ones(channels, height, 6)
    parts = []
    for g in grids:
        padded = torch.zeros(channels, height, g.shape[2])
        padded[:, : g.shape[1]] = g  # grey broadcast to RGB beside colour runs
        parts += [padded, bar]
    return torch.cat(parts[:-1], dim=2)


@hydra.main(config_path=str(CONF_DIR), config_name="sample", version_base="1.3")
def main(cfg: DictConfig) -> None:
    sample(cfg)
