"""`genlab export run=PATH [out=FOLDER]`: the generator as safetensors plus its config."""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from genlab.config import CONF_DIR, required
from genlab.data.datasets import read_only
from genlab.errors import one_message
from genlab.export import export
from genlab.files import Outputs
from genlab.loading import load_run, run_of


@hydra.main(config_path=str(CONF_DIR), config_name="export", version_base="1.3")
@one_message
def main(cfg: DictConfig) -> None:
    with read_only():  # the run's data set config is anyone's
        export_run(cfg)


def export_run(cfg: DictConfig) -> None:
    run = required(cfg, "run", "genlab export run=RUN_FOLDER_OR_CHECKPOINT")
    model, run_cfg, state = load_run(run, torch.device("cpu"), cfg.trust_code, cfg.get("solver"))
    # out=FOLDER is an output folder of its own; by default the export is the run's export/
    run_dir = run_of(Path(state["path"]))
    out, sub = (Outputs(cfg.out), "") if cfg.out else (Outputs(run_dir), "export")
    folder = out.path(sub)
    source = {"checkpoint": state["path"], "step": int(state["step"])}
    written = export(model, run_cfg, source, out, sub)
    z = f"torch.randn(16, {model.latent_dim})" if model.latent_dim else "None"
    call = {"none": f"g({z})", "labels": f"g({z}, labels)", "image": f"g({z}, conditions)"}
    print(
        f"Wrote {written[0]} (step {state['step']}). Load with:\n"
        f"  from genlab.export import load_generator; g = load_generator({str(folder)!r})\n"
        f"  images = {call[model.condition.kind]}  # in [-1, 1]; from "
        f"{model.condition.describe()}"
    )
    for line in written[1:]:
        print(line)
