"""`genlab sample run=PATH [overrides]`: sample grids (and files) from trained models."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from genlab.config import CONF_DIR, build, check_config, degradation, required
from genlab.data.datasets import IMAGE_SUFFIXES, read_image, read_only
from genlab.errors import ConfigError, one_message
from genlab.files import Outputs
from genlab.images import png_bytes, tiled, to_grid, written_by_genlab
from genlab.loading import load_run, protocol_tag, run_of

if TYPE_CHECKING:  # the sampler is built by Hydra; importing it here would load diffusers
    from genlab.models.base import Family
    from genlab.sampling import Sampler


def sample(cfg: DictConfig) -> Path:
    run = required(cfg, "run", "genlab sample run=RUN_FOLDER_OR_CHECKPOINT")
    check_config(cfg, ("sampler", "device"))
    sampler = build(cfg.sampler, "sampler")
    device = build(cfg.device, "device")
    if cfg.input:
        return from_folder(cfg, run, sampler.seed, device)
    if cfg.out:
        _check_out(Path(cfg.out), cfg, sampler.num_images)
    if sampler.num_images > sampler.MAX_GRID and not cfg.files:
        raise ConfigError(
            f"sampler.num_images={sampler.num_images}: a grid holds at most {sampler.MAX_GRID} "
            f"images; set files=true to write each image (the grid then shows the first "
            f"{sampler.MAX_GRID})"
        )
    runs = cfg.runs
    if not OmegaConf.is_list(runs):
        raise ConfigError(
            f"runs={runs!r}: give a list of run folders or checkpoints, e.g. runs=[RUN2,RUN3]"
        )
    grids, written = [], 0
    for i, path in enumerate([run, *runs]):
        model, run_cfg, state = load_run(path, device, cfg.trust_code, cfg.get("solver"))
        degrade = degradation(run_cfg, model.shape["channels"], model.shape["image_size"])
        if cfg.upscaler:  # a cascade: each run's images made larger by the upscaler
            from genlab.models.cascade import upscaled

            model, run_cfg = upscaled(model, cfg.upscaler, device, cfg.trust_code)
        try:
            sampler.check(model)
        except ValueError as e:
            raise ConfigError(f"{e} ({path})") from None
        if i == 0:
            folder, name = _where(cfg, state, sampler, model)

        def real(node=run_cfg.dataset):  # the held-out data, for modes that start from it
            return build(node, "dataset", split="test")

        batches, nrow = sampler(model, device, real, degrade)
        shown = []
        for images in batches:  # at most sampler.batch_size images in memory besides the grid
            if i == 0 and cfg.files:
                for image in images:
                    folder.write(_file(name, written), _png(image), durable=False)
                    written += 1
            room = sampler.MAX_GRID - sum(len(s) for s in shown)
            if room > 0:
                shown.append(images[:room])
        grids.append(to_grid(torch.cat(shown), nrow))
    grid = grids[0] if len(grids) == 1 else _side_by_side(grids)
    out = folder.write(name, png_bytes(grid))
    print(f"Wrote {out}" + (f" and {written} images in {out.with_suffix('')}/" if written else ""))
    return out


def from_folder(cfg: DictConfig, run: str, seed: int, device: torch.device) -> Path:
    """`input=FOLDER`: what a model that generates from an image makes of each image in FOLDER
    (the user's conditions: low-resolution, noisy, grey or masked images, at any size its
    networks take), one PNG per image with its name, in `out` (a folder) or by default
    RUN/samples/<FOLDER's name>_seed<seed>/. Refused before any image is made where a file
    genlab did not write would be replaced."""
    source = Path(cfg.input).expanduser()
    if not (isinstance(cfg.tile, int) and cfg.tile >= 1):
        raise ConfigError(f"tile must be a number of pixels >= 1, got {cfg.tile!r}")
    if not (isinstance(cfg.tile_overlap, int) and cfg.tile_overlap >= 0):
        raise ConfigError(f"tile_overlap must be a number of pixels >= 0, got {cfg.tile_overlap!r}")
    files = sorted(
        p for p in source.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
    if not files:
        raise ConfigError(
            f"input={source}: give a folder of images ({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    if cfg.runs or cfg.upscaler:
        raise ConfigError(
            "input= makes images with one run from your images; runs=[...] and upscaler= are "
            "for grids of generated images"
        )
    model, run_cfg, state = load_run(run, device, cfg.trust_code, cfg.get("solver"))
    degrade = degradation(run_cfg, model.shape["channels"], model.shape["image_size"])
    if degrade is None:
        raise ConfigError(
            f"input={source}: {run} generates from {model.condition.describe()}, not from "
            "images; input= is for a model trained with a condition= (lowres, mask, grey, noise)"
        )
    channels = model.condition.shape[0] if model.condition.shape else model.shape["channels"]
    images = [read_image(p, channels) for p in files]  # an unreadable one: refused before writing
    names = [f"{p.stem}.png" for p in files]
    if cfg.out:
        out = Outputs(Path(cfg.out), manifest=False)
        if not cfg.overwrite:
            _refuse_foreign_pngs([out.path(n) for n in names])
    else:
        out = Outputs(run_of(Path(state["path"])))
        names = [f"samples/{source.name}_seed{seed}/{n}" for n in names]
        out.refuse_foreign(names, "move it away, or write elsewhere with out=FOLDER")
    gen = torch.Generator(device=device).manual_seed(seed)
    scale = model.shape["image_size"] // model.condition.shape[1]

    def make(condition: torch.Tensor) -> torch.Tensor:
        return model.generate(len(condition), gen, condition)

    with torch.no_grad():
        for image, name in zip(images, names, strict=True):
            condition = degrade.prepare(image[None].to(device))
            made = tiled(make, condition, scale, cfg.tile, cfg.tile_overlap)
            out.write(name, _png(made[0].cpu()), durable=False)
    folder = out.path(names[0]).parent
    print(f"Wrote {len(names)} images from {source} in {folder}/")
    return folder


def _where(cfg: DictConfig, state: dict, sampler: Sampler, model: Family) -> tuple[Outputs, str]:
    """The folder and name of the grid: `out`, or by default, in the run folder,
    samples/<mode>[_<solver><steps>...][_label<l>][_trunc<t>][_temp<T>]_seed<seed>.png (grids made
    with another solver or other settings keep files of their own). Refused before any image is
    made where a file genlab did not write would be replaced."""
    if cfg.out:  # checked by _check_out
        out = Path(cfg.out)
        return Outputs(out.parent, manifest=False), out.name
    how = protocol_tag(model.sampling_protocol())
    for key, short in (("label", "label"), ("truncation", "trunc"), ("temperature", "temp")):
        if (value := getattr(sampler, key)) is not None:
            how += f"_{short}{value:g}"
    run = Outputs(run_of(Path(state["path"])))
    name = f"samples/{sampler.mode}{how}_seed{sampler.seed}.png"
    files = [_file(name, i) for i in range(sampler.num_images)] if cfg.files else []
    run.refuse_foreign([name, *files], "move it away, or write elsewhere with out=FILE.png")
    return run, name


def _file(name: str, i: int) -> str:
    """The `i`-th image's own file (`files=true`): beside the grid, in a folder of its name."""
    return f"{name.removesuffix('.png')}/{i:05d}.png"


def _check_out(out: Path, cfg: DictConfig, num: int) -> None:
    """Refuse an `out` that is not a PNG file name, or whose writing would replace a file that
    genlab did not write (unless `overwrite=true`), before any image is made."""
    if out.suffix.lower() != ".png" or out.is_dir():
        raise ConfigError(f"out={out}: give the name of a .png file, e.g. out=samples.png")
    targets = [out]
    if cfg.files:
        folder = out.with_suffix("")
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"files=true writes into the folder {folder}, which is a file")
        if folder.is_dir():  # the files that files=true would replace
            targets += [p for p in folder.glob("*.png") if p.stem.isdigit() and int(p.stem) < num]
    if not cfg.overwrite:
        _refuse_foreign_pngs(targets)


def _refuse_foreign_pngs(targets: list[Path]) -> None:
    """Refuse to replace a file at `out` that is not a PNG genlab wrote (`overwrite=false`)."""
    foreign = [p for p in targets if p.exists() and not written_by_genlab(p)]
    if foreign:
        raise ConfigError(
            f"{foreign[0]} exists and is not a PNG that genlab wrote: choose another out=, or "
            "set overwrite=true to replace it"
        )


def _png(image: torch.Tensor) -> bytes:
    """One image in [-1, 1] (C, H, W) as a PNG of its own, without the grid's border."""
    return png_bytes(to_grid(image[None], 1)[:, 2:-2, 2:-2])


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
@one_message
def main(cfg: DictConfig) -> None:
    with read_only():  # the runs' data set configs are anyone's
        sample(cfg)
