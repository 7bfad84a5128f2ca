"""`genlab export run=PATH [out=FOLDER]`: the generator as safetensors plus its config."""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from genlab.commands.eval import load_run, run_folder
from genlab.config import CONF_DIR
from genlab.export import export


@hydra.main(config_path=str(CONF_DIR), config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    model, loss, run_cfg, state = load_run(cfg.run, torch.device("cpu"))
    folder = Path(cfg.out) if cfg.out else run_folder(Path(state["path"])) / "export"
    source = {"checkpoint": state["path"], "step": int(state["step"])}
    export(model, loss, run_cfg, source, folder)
    print(
        f"Wrote {folder}/generator.safetensors and generator.yaml (step {state['step']}). "
        f"Load with:\n  from genlab.export import load_generator; "
        f"g = load_generator({str(folder)!r})"
    )
