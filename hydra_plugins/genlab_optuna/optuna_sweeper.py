"""Hydra's entry to genlab's Optuna search (`genlab.search`): the sweeper of `hydra/sweeper=optuna`
(conf/hydra/sweeper/optuna.yaml, whose comments are the reference of its keys). Hydra finds
sweepers in the `hydra_plugins` package only, so this thin class lives here."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class OptunaSweeper(Sweeper):
    """A worker of one Optuna study: runs its trials one at a time in this process until the
    study holds `n_trials` trials."""

    def __init__(
        self,
        params: DictConfig | None = None,
        direction: str = "minimize",
        study_name: str | None = None,
        storage: str | None = None,
        n_trials: int = 20,
        n_jobs: int = 1,
        retry_failed: int = 0,
        sampler: DictConfig | None = None,
        pruner: DictConfig | None = None,
    ) -> None:
        self.params = dict(OmegaConf.to_container(params)) if params else {}
        self.direction, self.study_name, self.storage = direction, study_name, storage
        self.n_trials, self.n_jobs, self.retry_failed = n_trials, n_jobs, retry_failed
        self.sampler, self.pruner = sampler, pruner

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        from genlab import search

        search.check(self)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        if self.n_jobs == 1 and type(self.launcher).__name__ == "BasicLauncher":
            return search.work(self, arguments, sweep_dir)
        return search.work_in_processes(self, arguments, sweep_dir)
