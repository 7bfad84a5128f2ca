"""`genlab export run=PATH [out=FOLDER]`: the generator as safetensors plus its config."""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from genlab.config import CONF_DIR, check_config, required, solver_group
from genlab.errors import one_message
from genlab.export import export
from genlab.run_folder import load_run, run_of


@hydra.main(config_path=str(CONF_DIR), config_name="export", version_base="1.3")
@one_message
def main(cfg: DictConfig) -> None:
    run = required(cfg, "run", "genlab export run=RUN_FOLDER_OR_CHECKPOINT")
    check_config(cfg, solver_group(cfg))
    model, loss, run_cfg, state = load_run(
        run, torch.device("cpu"), cfg.trust_code, cfg.get("solver")
    )
    folder = Path(cfg.out) if cfg.out else run_of(Path(state["path"])) / "export"
    source = {"checkpoint": state["path"], "step": int(state["step"])}
    written = export(model, loss, run_cfg, source, folder)
    print(
        f"Wrote {written[0]} (step {state['step']}). Load with:\n"
        f"  from genlab.export import load_generator; g = load_generator({str(folder)!r})"
    )
    for line in written[1:]:
        print(line)
