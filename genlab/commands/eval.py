"""`genlab eval run=PATH [overrides]`: metrics of a trained model, printed and saved as JSON."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from genlab.config import CONF_DIR, build, check_config, degradation, required
from genlab.data.datasets import read_only
from genlab.errors import GenlabError, one_message
from genlab.evaluation import Report, format_table
from genlab.files import Outputs
from genlab.loading import load_run, protocol_tag, run_of

log = logging.getLogger(__name__)


def report_stem(protocol: Mapping[str, Any]) -> str:
    """`<features>_n<generated images>[_<solver><steps>][_eta<eta>][_shift<shift>][_g<guidance>]
    [_noclip][_seed<seed>]`: evaluations with other features, another number of images, another
    solver, guidance or `evaluator.seed` (other than 0) keep files of their own
    (`genlab.loading.protocol_tag`)."""
    seed = f"_seed{protocol['seed']}" if protocol.get("seed") else ""
    return f"{protocol['features']}_n{protocol['num_generated']}{protocol_tag(protocol)}{seed}"


def save_report(report: Report, run_dir: Path, step: int, checkpoint: str) -> Path:
    """RUN/eval/<report_stem>_step<step>.json."""
    name = f"eval/{report_stem(report.protocol)}_step{step:07d}.json"
    record = {"step": step, "checkpoint": checkpoint, **report.__dict__}
    return Outputs(run_dir).write(name, json.dumps(record, indent=2).encode())


def evaluate(cfg: DictConfig) -> Report:
    run = required(cfg, "run", "genlab eval run=RUN_FOLDER_OR_CHECKPOINT")
    check_config(cfg, ("evaluator", "device"))
    evaluator = build(cfg.evaluator, "evaluator")
    device = build(cfg.device, "device")
    model, run_cfg, state = load_run(run, device, cfg.trust_code, cfg.get("solver"))
    degrade = degradation(run_cfg, model.shape["channels"], model.shape["image_size"])
    dataset = run_cfg.dataset
    if cfg.upscaler:  # a cascade, measured against the upscaler's (larger) images
        from genlab.models.cascade import upscaled

        model, upscaler_cfg = upscaled(model, cfg.upscaler, device, cfg.trust_code)
        dataset = upscaler_cfg.dataset
    report = evaluator(model, dataset, device, condition=degrade)
    step = int(state["step"])
    print(f"{state['path']} (step {step})\n{format_table(report)}", flush=True)
    run_dir = run_of(Path(state["path"]))
    try:  # the metrics are printed above, so a run folder that takes no file loses nothing
        out = save_report(report, run_dir, step, state["path"])
        if cfg.tensorboard:
            from genlab.logger import TensorBoardLogger

            tb = TensorBoardLogger(run_dir=run_dir)
            tb.log_scalars({f"eval/{k}": v for k, v in report.metrics.items()}, step)
            tb.close()
    except GenlabError as e:
        raise GenlabError(f"{e}. The metrics above were not saved.") from None
    print(f"Written to {out}")
    return report


@hydra.main(config_path=str(CONF_DIR), config_name="eval", version_base="1.3")
@one_message
def main(cfg: DictConfig) -> dict[str, float]:
    with read_only():  # the run's data set config is anyone's
        return evaluate(cfg).metrics
