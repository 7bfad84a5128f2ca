"""`genlab train [overrides]`: check the config, build its objects, fit, name the run folder."""

from __future__ import annotations

import logging
import random
import shlex
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from genlab.checkpoint import find_resume, load_checkpoint
from genlab.config import CONF_DIR, build, check_config, choice, meaning_changes
from genlab.data import DeviceLoader
from genlab.errors import ConfigError

log = logging.getLogger(__name__)

GROUPS = ("trainer", "device", "dataset", "model", "loss", "optimizer", "logger")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, float]:
    """Check the whole config, build the objects it names and train; return the final values."""
    check_config(cfg, GROUPS)
    run_dir = Path(run_dir or HydraConfig.get().runtime.output_dir)
    trainer = build(cfg.trainer, "trainer")
    device = build(cfg.device, "device")
    resume_from = find_resume(trainer.resume, run_dir)
    state = load_checkpoint(resume_from) if resume_from else None
    if state is not None:
        changes = meaning_changes(OmegaConf.create(state["config"]), cfg)
        if changes and not trainer.force_resume:
            raise ConfigError(
                f"the config differs from the checkpoint {resume_from} in what it means:\n  "
                + "\n  ".join(changes)
                + "\nResume with the checkpoint's settings, or set trainer.force_resume=true."
            )
        if changes:
            log.warning("Resuming despite config changes: %s", "; ".join(changes))
        log.info("Resuming from %s", resume_from)
    seed_everything(trainer.seed)

    data = build(cfg.dataset, "dataset")
    model = build(
        cfg.model,
        "model",
        channels=data.channels,
        image_size=data.image_size,
        num_classes=data.num_classes,
    )
    loss = build(cfg.loss, "loss")
    _refuse(model.check_loss, loss, f"loss={choice('loss')} does not fit model={choice('model')}")
    spec = build(cfg.optimizer, "optimizer")
    optimizers = _refuse(model.configure_optimizers, spec, f"optimizer={choice('optimizer')}")
    loader = _refuse(
        lambda size: DeviceLoader(data, size, device, trainer.seed),
        trainer.batch_size,
        f"trainer (dataset={choice('dataset')})",
    )
    log.info(
        "%s (%d parameters), loss %s, on %s: %d images %dx%dx%d, device %s",
        choice("model"),
        sum(p.numel() for p in model.parameters()),
        choice("loss"),
        data.name,
        len(data),
        data.channels,
        data.image_size,
        data.image_size,
        device,
    )
    logger = build(cfg.logger, "logger", run_dir=str(run_dir))
    values = trainer.fit(
        model,
        loss,
        optimizers,
        loader,
        device=device,
        run_dir=run_dir,
        logger=logger,
        state=state,
        extra_state={"config": OmegaConf.to_yaml(cfg, resolve=True)},
        resume_hint=_resume_command(run_dir),
    )
    log.info("Run folder: %s", run_dir.resolve())
    return values


def _resume_command(run_dir: Path) -> str:
    """The command that continues this run in its own folder."""
    overrides = []
    if HydraConfig.initialized():
        skip = ("hydra.run.dir=", "trainer.resume=")
        overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith(skip)]
    words = ["genlab", "train", *overrides, f"hydra.run.dir={run_dir}", "trainer.resume=auto"]
    return " ".join(shlex.quote(w) for w in words)


def _refuse(fn, arg: Any, context: str) -> Any:
    try:
        return fn(arg)
    except ValueError as e:
        raise ConfigError(f"{context}: {e}") from e


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> dict[str, float]:
    return train(cfg)
