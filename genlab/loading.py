"""Reading a trained run back for `genlab eval`, `sample` and `export`: its model (weights loaded),
the config it was trained with, and where its files go. What a run left behind loads without
running code (`genlab.trust`)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from genlab.checkpoint import find_resume, load_checkpoint
from genlab.config import build, build_model, check_node, saved_config
from genlab.errors import GenlabError
from genlab.trust import check_targets


def protocol_tag(p: Mapping[str, Any]) -> str:
    """The part of a file name that tells how images were made, from a sampling protocol `p`:
    `_<solver><steps>[_eta<eta>][_shift<shift>][_g<guidance>][_noclip][_x<scale><upscaler
    hash>...]` (`_<solver>_tol<tolerance>` for an adaptive solver, "" for a family without a
    solver; a cascade adds its upscaler and the upscaler's sampling), so that evaluations and
    grids made another way keep files of their own."""
    tag = f"_{p['sampler']}{p['sampler_steps']}" if "sampler_steps" in p else ""
    if "tolerance" in p:  # an adaptive solver: its NFE is measured, its tolerance chosen
        tag = f"_{p['sampler']}_tol{p['tolerance']:g}"
    if p.get("eta"):
        tag += f"_eta{p['eta']:g}"
    if p.get("time_shift", 1) != 1:
        tag += f"_shift{p['time_shift']:g}"
    if p.get("guidance", 1) != 1:
        tag += f"_g{p['guidance']:g}"
    if p.get("clip") is False:
        tag += "_noclip"
    if p.get("upscaler"):  # a cascade: which upscaler, and its own solver
        digest = hashlib.sha1(str(p["upscaler"]).encode()).hexdigest()[:8]
        theirs = {k.removeprefix("upscaler_"): v for k, v in p.items() if k.startswith("upscaler_")}
        tag += f"_{p['cascade']}{digest}{protocol_tag(theirs)}"
    return tag


def run_of(checkpoint: Path) -> Path:
    """The run folder of a checkpoint (`RUN/checkpoints/x.pt` -> `RUN`)."""
    parent = checkpoint.parent
    return parent.parent if parent.name == "checkpoints" else parent


def load_run(
    run: str | Path,
    device: torch.device,
    trust_code: bool = False,
    solver: DictConfig | None = None,
) -> tuple[Any, DictConfig, dict]:
    """The model (weights loaded, on `device`), run config and checkpoint of a run folder or
    checkpoint; a model with a sampler (diffusion, PixelCNN) samples with `solver` when given
    (a node of the solver group, or keys without `_target_` that change the run's own), else
    with the run's. The config stored in the checkpoint builds only allow-listed targets
    (`genlab.trust`) unless `trust_code`; the checkpoint's `path` is added to the state."""
    path = find_resume(str(run), Path(run), key="run")
    state = load_checkpoint(path)
    source = str(path)
    cfg = saved_config(state, source)
    for group in ("dataset", "model"):
        if not isinstance(cfg.get(group), DictConfig):
            raise GenlabError(f"{source}: its stored config has no {group}")
        check_targets(cfg[group], group, source, trust_code)
    if solver is not None:
        if "sampler" not in cfg.model:
            raise GenlabError(
                f"solver= is for models with a sampler (diffusion, autoregressive); {source} "
                "holds a model that samples without one"
            )
        if "_target_" not in solver:  # settings of the run's own solver: solver.guidance=2
            solver = OmegaConf.merge(cfg.model.sampler, solver)
            check_node(solver, "solver")
        cfg.model.sampler = solver
        check_node(cfg.model, "model")  # the solver's kind against the model's
    cfg.model.pop("init_from", None)  # the weights come from this checkpoint
    data = build(cfg.dataset, "dataset")
    model = build_model(cfg, data)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise GenlabError(f"{path} does not fit its own model config: {e}") from None
    state["path"] = source
    return model.to(device).eval(), cfg, state
