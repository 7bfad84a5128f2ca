"""Hydra callbacks of `genlab train` (`hydra.callbacks` in conf/train.yaml): a run folder that
cannot be made is one message before Hydra tries, and a sweep with failed jobs ends non-zero
once every job has run.

Hydra turns an exception raised in a callback into a warning and goes on, so these end the
command with `SystemExit(message)`: the message on stderr, exit status 1.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from genlab.errors import GenlabError, writing
from genlab.record import read_records
from genlab.run_folder import made_here
from genlab.search import SWEEPER


class RunChecks(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _make(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time()
        sweep = _make(config, "hydra.sweep.dir")
        continues = (
            OmegaConf.select(config, "trainer.resume") is not None
            or OmegaConf.select(config, "trainer.overwrite", default=False)
            or OmegaConf.select(config, "hydra.sweeper._target_") == SWEEPER  # joins a study:
        )  # its trials' folders are new, or it is refused for another study's (genlab.search)
        held = [r["run_dir"] for r in read_records(sweep)]
        if held and not continues:
            raise SystemExit(
                f"the sweep folder {sweep} already holds runs ({', '.join(held[:3])}"
                f"{', ...' if len(held) > 3 else ''}), which this sweep's jobs would overwrite. "
                "Continue them with trainer.resume=auto, replace them with trainer.overwrite=true, "
                "or choose another folder with hydra.sweep.dir=..."
            )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """After every job ran: one error naming the jobs of this sweep that did not finish."""
        sweep = Path(OmegaConf.select(config, "hydra.sweep.dir"))
        records = [r for r in read_records(sweep) if r.get("updated", 0) >= self.started]
        failed = [r for r in records if r.get("status") not in ("finished", "pruned", "running")]
        if failed:
            lines = "\n".join(
                f"  {Path(r['run_dir']).name}: {r.get('status')}: {r.get('reason')}" for r in failed
            )
            raise SystemExit(
                f"{len(failed)} of {len(records)} jobs did not finish:\n{lines}\n"
                f"Their records: genlab report {sweep}"
            )


def _make(config: DictConfig, key: str) -> Path:
    """Make the folder `key` names (Hydra would, with a traceback where it cannot). Its name
    may use `${hydra:...}` (the default, `outputs/<model>_<dataset>/<time>`), which resolves
    through the HydraConfig that Hydra sets only after this callback: it is set here as Hydra
    sets it. The time in the name is resolved once per config (Hydra's `now` is cached), so
    Hydra's job runs in the folder made here."""
    if HydraConfig.instance().cfg is None:
        HydraConfig.instance().set_config(config)
    folder = Path(OmegaConf.select(config, key))
    try:
        with writing(folder):
            if not folder.exists():
                made_here.add(folder.absolute())
            folder.mkdir(parents=True, exist_ok=True)
    except GenlabError as e:
        raise SystemExit(str(e)) from None
    return folder
