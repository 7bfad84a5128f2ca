"""`genlab export run=PATH [out=FOLDER]`: the generator as safetensors plus its config."""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from genlab.config import CONF_DIR, required
from genlab.errors import one_message
from genlab.export import export
from genlab.run_folder import load_run, run_of


@hydra.main(config_path=str(CONF_DIR), config_name="export", version_base="1.3")
@one_message
def main(cfg: DictConfig) -> None:
    run = required(cfg, "run", "genlab export run=RUN_FOLDER_OR_CHECKPOINT")
    model, loss, run_cfg, state = load_run(run, torch.device("cpu"), cfg.trust_code)
    folder = Path(cfg.out) if cfg.out else run_of(Path(state["path"])) / "export"
    source = {"checkpoint": state["path"], "step": int(state["step"])}
    export(model, loss, run_cfg, source, folder)
    print(
        f"Wrote {folder}/generator.safetensors and generator.yaml (step {state['step']}). "
        f"Load with:\n  from genlab.export import load_generator; "
        f"g = load_generator({str(folder)!r})"
    )
