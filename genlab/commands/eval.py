"""`genlab eval run=PATH [overrides]`: metrics of a trained model, printed and saved as JSON."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from genlab.checkpoint import find_resume, load_checkpoint
from genlab.config import CONF_DIR, build, build_model, check_config, saved_config
from genlab.errors import GenlabError
from genlab.evaluation import Report, format_table

log = logging.getLogger(__name__)


def run_folder(checkpoint: Path) -> Path:
    """The run folder of a checkpoint (`RUN/checkpoints/x.pt` -> `RUN`)."""
    parent = checkpoint.parent
    return parent.parent if parent.name == "checkpoints" else parent


def load_run(run: str, device) -> tuple[Any, Any, DictConfig, dict]:
    """The model (weights loaded, on `device`), loss, run config and checkpoint of a run."""
    path = find_resume(str(run), Path(run), key="run")
    state = load_checkpoint(path)
    if "config" not in state:
        raise GenlabError(f"{path} holds no run config; it was not written by genlab train")
    cfg = saved_config(state)
    data = build(cfg.dataset, "dataset")
    model = build_model(cfg.model, data)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise GenlabError(f"{path} does not fit its own model config: {e}") from None
    state["path"] = str(path)
    return model.to(device).eval(), build(cfg.loss, "loss"), cfg, state


def save_report(report: Report, run_dir: Path, step: int, checkpoint: str) -> Path:
    out = run_dir / "eval" / f"{report.protocol['features']}_step{step:07d}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"step": step, "checkpoint": checkpoint, **report.__dict__}
    out.write_text(json.dumps(record, indent=2))
    return out


def evaluate(cfg: DictConfig) -> Report:
    check_config(cfg, ("evaluator", "device"))
    evaluator = build(cfg.evaluator, "evaluator")
    device = build(cfg.device, "device")
    model, loss, run_cfg, state = load_run(cfg.run, device)
    report = evaluator(model, loss, run_cfg.dataset, device)
    run_dir = run_folder(Path(state["path"]))
    out = save_report(report, run_dir, int(state["step"]), state["path"])
    if cfg.tensorboard:
        from genlab.logger import TensorBoardLogger

        tb = TensorBoardLogger(run_dir=run_dir)
        tb.log_scalars({f"eval/{k}": v for k, v in report.metrics.items()}, int(state["step"]))
        tb.close()
    print(f"{state['path']} (step {state['step']})\n{format_table(report)}\nWritten to {out}")
    return report


@hydra.main(config_path=str(CONF_DIR), config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> dict[str, float]:
    return evaluate(cfg).metrics
