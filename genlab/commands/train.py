"""`genlab train [overrides]`: check the config, build its objects, fit, name the run folder."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import shlex
from functools import partial
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from genlab import distributed, search
from genlab import record as record_lib
from genlab.checkpoint import seed_everything
from genlab.config import (
    CONF_DIR,
    MODEL_PARTS,
    build,
    build_model,
    check_condition,
    check_config,
    choice,
    degradation,
    fold,
    named,
)
from genlab.distributed import Processes
from genlab.errors import ConfigError, TrialPruned, one_message
from genlab.logger import NullLogger
from genlab.optim import autocast_dtype
from genlab.run_folder import RunFolder, made_here
from genlab.training_state import resume_point

log = logging.getLogger(__name__)

GROUPS = (
    "trainer",
    "device",
    "dataset",
    "model",
    "optimizer",
    "scheduler",
    "augment",
    "logger",
    "evaluator",
)


def train(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, float]:
    """Check the whole config and the run folder, build the objects the config names and train;
    `run.json` records how the run went (`run_folder.RunFolder`). Return the final values."""
    run_dir = Path(run_dir or HydraConfig.get().runtime.output_dir)
    distributed.from_submitit_tasks()  # RANK, as torchrun sets it, before rank 0 takes the folder
    folder = RunFolder(
        run_dir,
        main=int(os.environ.get("RANK", "0")) == 0,
        record=_describe(cfg),
        keep_failed=_multirun(),  # a sweep's report lists the jobs that failed
    )
    with folder:
        cfg = fold(cfg)  # the loss and solver groups into the model node
        check_config(cfg, GROUPS + (("condition",) if cfg.get("condition") else ()))
        check_condition(cfg)
        _check_objective(cfg)
        trainer = build(cfg.trainer, "trainer")
        device = build(cfg.device, "device")
        folder.claim(trainer.resume, trainer.overwrite)
        procs, device = _refuse(distributed.start, device, f"device={choice('device')}")
        try:
            if procs.distributed:
                run_dir = _follow_rank0(run_dir, procs)
            values = _train(cfg, trainer, device, procs, run_dir, folder)
            distributed.stop(finished=True)
            return values
        except Exception:  # a run that failed after it began: how to go on from its checkpoint
            if folder.started and (run_dir / "checkpoints" / "last.pt").is_file():
                log.info("%s", _what_next(run_dir))
            raise
        finally:
            distributed.stop()


def _train(
    cfg: DictConfig, trainer, device, procs, run_dir: Path, folder: RunFolder
) -> dict[str, float]:
    resume_from, state = resume_point(trainer.resume, trainer.force_resume, run_dir, cfg)
    seed_everything(trainer.seed)
    data = build(cfg.dataset, "dataset")
    model = build_model(cfg, data)
    degrade = degradation(cfg, data.channels, data.image_size)
    spec = build(cfg.optimizer, "optimizer")
    optimizers = _refuse(model.configure_optimizers, spec, f"optimizer={choice('optimizer')}")
    schedule = build(cfg.scheduler, "scheduler")
    schedulers = {
        k: _refuse(schedule, o, f"scheduler={choice('scheduler')}") for k, o in optimizers.items()
    }
    augment = build(cfg.augment, "augment")
    if augment.policy:
        _refuse(model.set_augment, augment, f"augment={choice('augment')}")
    loader = _refuse(
        lambda t: t.loader(
            data, device, procs, augment.data if augment.augments_data else None, degrade
        ),
        trainer,
        f"trainer (dataset={choice('dataset')})",
    )
    _refuse(lambda t: autocast_dtype(t.precision, device), trainer, "trainer")
    log.info(
        "%s (%d trainable parameters), objective %s, generating from %s, on %s: %d images "
        "%dx%dx%d, device %s",
        choice("model"),
        sum(p.numel() for p in model.parameters() if p.requires_grad),  # not EMA copies
        named("loss", OmegaConf.select(cfg, "model.objective._target_", default="none")),
        model.condition.describe() if degrade is None else degrade.protocol()["condition"],
        data.name,
        len(data),
        data.channels,
        data.image_size,
        data.image_size,
        device,
    )
    evaluator = build(cfg.evaluator, "evaluator")
    if trainer.eval_every is not None and procs.main:
        evaluator.announce(cfg.dataset, degrade)
    logger = (
        build(cfg.logger, "logger", run_dir=str(run_dir), name=_sweep_name())
        if procs.main
        else NullLogger(run_dir=run_dir)
    )
    try:
        values = trainer.fit(
            model,
            optimizers,
            schedulers,
            loader,
            run_dir=run_dir,
            logger=logger,
            procs=procs,
            state=state,
            extra_state={"config": OmegaConf.to_yaml(cfg, resolve=True)},
            resume_hint=_resume_command(run_dir),
            evaluate=lambda: evaluator(model, cfg.dataset, device, True, degrade).metrics,
            on_evaluated=partial(search.report, cfg.get("optimized_metric")),
            on_start=lambda step: folder.start(
                cfg if HydraConfig.initialized() else None,
                **({"resumed_from": str(resume_from), "resumed_at": step} if resume_from else {}),
            ),
        )
        if device.type == "cuda":
            values["perf/peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        hparams = {
            g: choice(g)
            for g in (*GROUPS, *MODEL_PARTS)
            if g not in ("trainer", "device", "logger") and choice(g) != "?"
        }
        if HydraConfig.initialized():
            hparams.update(record_lib.parse_overrides(list(HydraConfig.get().overrides.task)))
        hparams.update(seed=trainer.seed, batch_size=trainer.batch_size, lr=spec.lr)
        swept = _swept() if _sweep_name() is not None else set()  # HParams shows these first
        # and five metrics by default: the sweep's objective, the evaluation's, then the losses
        first = (cfg.get("optimized_metric"), cfg.trainer.get("keep_best"))
        final = sorted(
            (k for k in values if k.startswith(("loss/", "eval/"))),
            key=lambda k: (k not in first, not k.startswith("eval/")),
        )
        logger.log_hparams(hparams, {k: values[k] for k in final}, swept)
    except BaseException:
        with contextlib.suppress(Exception):  # the error on its way out is the one to report
            logger.close()
        raise
    logger.close()
    objective = folder.record["objective"]
    folder.finish(
        objective={**objective, "value": values.get(objective["name"] or "")},
        metrics=values,
        steps=int(values.get("step", 0)),
        images_per_s=values.get("perf/images_per_s"),
        peak_memory={
            "host_mb": record_lib.peak_host_memory_mb(),
            "cuda_mb": values.get("perf/peak_cuda_mb"),
        },
    )
    log.info("Run folder: %s\n%s", run_dir.resolve(), _what_next(run_dir))
    return values


def _follow_rank0(run_dir: Path, procs: Processes) -> Path:
    """Every process writes into rank 0's run folder; the others log warnings only. A folder
    made for this process at another second, and left empty, is removed."""
    root = logging.getLogger()
    if not procs.main:
        for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(logging.WARNING)
    shared = Path(distributed.broadcast(str(run_dir.resolve()), procs))
    own = run_dir.resolve()
    if own != shared and run_dir.absolute() in made_here:
        with contextlib.suppress(OSError):  # not empty: not only this process's
            own.rmdir()
    return shared


def _swept() -> set[str]:
    """In a multirun, the keys its jobs vary: the sweeper's `params` and the sweep's command-line
    overrides with sweep syntax (`optimizer.lr=1e-4,2e-4`), which Hydra wrote to the sweep
    folder's multirun.yaml before the jobs began."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hydra_cfg = HydraConfig.get()
    keys = set((hydra_cfg.sweeper.get("params") or {}).keys())
    with contextlib.suppress(Exception):  # no readable multirun.yaml: the sweeper's keys
        sweep = OmegaConf.load(Path(hydra_cfg.sweep.dir) / "multirun.yaml")
        parsed = OverridesParser.create().parse_overrides(list(sweep.hydra.overrides.task))
        keys |= {o.key_or_group for o in parsed if o.is_sweep_override()}
    return keys


def _sweep_name(limit: int = 150) -> str | None:
    """In a multirun, the job's settings that the sweep varies, as one folder name (the
    TensorBoard run name): `optimizer.lr=0.0001`, not the settings every job shares."""
    if not (HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN):
        return None
    task = [o for o in HydraConfig.get().overrides.task if not o.startswith("hydra")]
    swept = _swept()
    varied = [o for o in task if o.lstrip("+~").partition("=")[0] in swept]
    name = ",".join(varied or task).replace("/", "_") or "defaults"
    if len(name) > limit:
        name = f"{name[: limit - 9]}~{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name


def _check_objective(cfg: DictConfig) -> None:
    metric, direction = cfg.get("optimized_metric"), cfg.get("optimized_direction", "minimize")
    if direction not in ("minimize", "maximize"):
        raise ConfigError(f"optimized_direction must be minimize or maximize, got {direction!r}")
    if metric is not None and not isinstance(metric, str):
        raise ConfigError(f"optimized_metric must be a logged name such as eval/fd, got {metric!r}")
    if metric and metric.startswith("eval/") and cfg.trainer.eval_every is None:
        raise ConfigError(
            f"optimized_metric={metric} needs an evaluation: set trainer.eval_every=0 (at the "
            "end) or N, or optimize a training value such as loss/loss"
        )


def _resume_command(run_dir: Path) -> str:
    """The command that continues this run in its own folder, with its own settings (the
    command line reads them from the run, `cli.resumed_settings`), under torchrun if started
    so, with the config folder a `--config-dir` added."""
    launcher = ["genlab"]
    world, local = (int(os.environ.get(k, "1")) for k in ("WORLD_SIZE", "LOCAL_WORLD_SIZE"))
    if world > 1:
        nodes = [f"--nnodes={world // local}"] if world > local else []
        launcher = ["torchrun", *nodes, f"--nproc_per_node={local}", "-m", "genlab"]
    config_dirs = []
    if HydraConfig.initialized():
        for source in HydraConfig.get().runtime.config_sources:
            if source.provider == "command-line" and source.schema == "file":
                config_dirs += ["--config-dir", source.path]
    words = [*launcher, "train", *config_dirs, f"hydra.run.dir={run_dir}", "trainer.resume=auto"]
    return " ".join(shlex.quote(w) for w in words)


def _what_next(run_dir: Path) -> str:
    """The commands that continue, evaluate, sample and export a run."""
    run = shlex.quote(str(run_dir))
    return (
        f"Continue it: {_resume_command(run_dir)} (trainer.max_steps=N: to step N)\n"
        f"Evaluate, sample, export: genlab eval run={run} | genlab sample run={run} | "
        f"genlab export run={run}"
    )


def _refuse(fn, arg: Any, context: str) -> Any:
    try:
        return fn(arg)
    except ValueError as e:
        raise ConfigError(f"{context}: {e}") from e


def _describe(cfg: DictConfig) -> dict[str, Any]:
    """What `run.json` says of a run from the start: its overrides, choices, seed, objective,
    versions and genlab's commit."""
    hydra_on = HydraConfig.initialized()
    overrides = list(HydraConfig.get().overrides.task) if hydra_on else []
    choices = dict(HydraConfig.get().runtime.choices) if hydra_on else {}
    return {
        "overrides": overrides,
        "params": record_lib.parse_overrides(overrides),
        "choices": {g: choices.get(g) for g in (*GROUPS, *MODEL_PARTS) if choices.get(g)},
        "seed": OmegaConf.select(cfg, "trainer.seed", default=None),
        "objective": {
            "name": cfg.get("optimized_metric"),
            "direction": cfg.get("optimized_direction"),
        },
        "versions": record_lib.versions(),
        "git_commit": record_lib.git_commit(),
    }


def _multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_and_record(cfg: DictConfig, run_dir: str | Path | None = None) -> float | None:
    """Train and return the objective (`optimized_metric`) for a sweeper.

    In a multirun, a failing job (recorded as failed in its `run.json`) returns NaN, a failed
    trial for Optuna, and the sweep goes on; `genlab.callbacks` ends the sweep with an error
    naming the failed jobs. A single run raises as usual.
    """
    try:
        values = train(cfg, run_dir)
    except TrialPruned as e:
        log.info("The run was pruned: %s", e)
        return math.nan
    except Exception as e:
        if not _multirun():
            raise
        log.error("The run failed and the sweep goes on: %s", e)
        return math.nan
    name = cfg.get("optimized_metric")
    if name and name not in values:
        log.warning("optimized_metric=%s was not produced by this run", name)
    return values.get(name) if name else None


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
@one_message
def main(cfg: DictConfig) -> float | None:
    return run_and_record(cfg)
