"""A run's checkpoints: what they hold, how they are written while training goes on, and how a run
continues from one (`resume_point`: which checkpoint, refused when it means another run).

`TrainingState` is everything that makes a resumed run continue exactly: the weights (with
BatchNorm statistics and EMA copies), optimizer and scheduler states, loss scalers, the data
position, every process's RNG states and the count of skipped updates. `Checkpoints` serializes it
at a checkpoint step and hands the bytes to a background thread (`BackgroundWriter`: write,
fsync, rename, `last.pt`, pruning). `TrainingState.load` puts a checkpoint back, with the
optimizer and schedule settings of the resuming config.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from functools import partial
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from genlab import distributed
from genlab.background import BackgroundWriter
from genlab.checkpoint import (
    checkpoint_bytes,
    find_resume,
    load_checkpoint,
    rng_state,
    seed_everything,
    set_rng_state,
)
from genlab.config import meaning_changes, saved_config
from genlab.data import DeviceLoader
from genlab.distributed import Processes
from genlab.errors import ConfigError, GenlabError
from genlab.files import Outputs
from genlab.models.base import Family
from genlab.optim import Updater

log = logging.getLogger(__name__)

FOLDER = "checkpoints"  # in the run folder
# Scheduler state that counts progress; the rest of a scheduler's state is its settings.
_PROGRESS = {"last_epoch", "_step_count", "_last_lr", "_get_lr_called_within_step", "_is_initial"}


def resume_point(
    resume: str | None, force: bool, run_dir: Path, cfg: DictConfig
) -> tuple[Path | None, dict[str, Any] | None]:
    """The checkpoint that `trainer.resume` names and its state (None, None for a fresh run).
    A checkpoint whose config differs from `cfg` in what it means (`config.MEANING`: the model,
    loss, data set or optimizer class) is refused, unless `force` (`trainer.force_resume`)."""
    path = find_resume(resume, run_dir)
    if path is None:
        if resume == "auto":
            log.info(
                "trainer.resume=auto: no checkpoint in %s, so training starts at step 0", run_dir
            )
        return None, None
    state = load_checkpoint(path)
    changes = meaning_changes(saved_config(state, str(path)), cfg)
    if changes and not force:
        raise ConfigError(
            f"the config differs from the checkpoint {path} in what it means:\n  "
            + "\n  ".join(changes)
            + "\nResume with the checkpoint's settings, or set trainer.force_resume=true."
        )
    if changes:
        log.warning("Resuming despite config changes: %s", "; ".join(changes))
    log.info("Resuming from %s", path)
    return path, state


class TrainingState:
    """The objects of a run whose state a checkpoint holds."""

    def __init__(
        self,
        model: Family,
        optimizers: dict[str, Optimizer],
        schedulers: dict[str, LRScheduler],
        update: Updater,
        loader: DeviceLoader,
        procs: Processes,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.model, self.optimizers, self.schedulers = model, optimizers, schedulers
        self.update, self.loader, self.procs, self.extra = update, loader, procs, extra or {}

    def state_dict(self, step: int, skipped: int) -> dict[str, Any] | None:
        """The checkpoint of `step` on the main process (None elsewhere); every process's RNG
        states are gathered into it (a collective: every process calls this)."""
        rngs = distributed.gather(rng_state(), self.procs)
        if not self.procs.main:
            return None
        return {
            "step": step,
            "model": self.model.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "updater": self.update.state_dict(),
            "loader": self.loader.state_dict(),
            "rng": rngs[0],
            **({"rng_ranks": rngs} if self.procs.distributed else {}),
            "skipped": skipped,
            **self.extra,
        }

    def load(self, state: dict[str, Any]) -> tuple[int, int]:
        """Continue from a checkpoint; return (step, skipped updates).

        The optimizers and schedulers keep the settings of this run's config: where the learning
        rate, another optimizer setting or the schedule changed since the checkpoint, the change
        is applied and logged, and the learning rate is that of the new schedule at this step."""
        optimizers, schedulers = self.optimizers, self.schedulers
        groups = {k: [_settings(g) for g in o.param_groups] for k, o in optimizers.items()}
        fresh = {k: s.state_dict() for k, s in schedulers.items()}
        lrs = {k: [g["lr"] for g in o.param_groups] for k, o in optimizers.items()}
        try:
            self.model.load_state_dict(state["model"])
            for name, optimizer in optimizers.items():
                optimizer.load_state_dict(state["optimizers"][name])
            saved = {k: state.get("schedulers", {}).get(k, v) for k, v in fresh.items()}
            for name, scheduler in schedulers.items():
                scheduler.load_state_dict(saved[name])
        except (RuntimeError, KeyError, ValueError) as e:
            raise GenlabError(f"the checkpoint does not fit this model: {e}") from None
        step = int(state["step"])
        for name, optimizer in optimizers.items():
            network = self.update.names[name]
            _apply_settings(optimizer, groups[name], network, step)
            if _settings(saved[name]) != _settings(fresh[name]):
                _replay(schedulers[name], optimizer, fresh[name], lrs[name], step)
                _log_schedule_change(saved[name], fresh[name], optimizer, network, step)
        self.update.load_state_dict(state.get("updater", {}))
        self.loader.load_state_dict(state["loader"])
        rngs = state.get("rng_ranks", [state["rng"]])
        if len(rngs) == self.procs.world:
            set_rng_state(rngs[self.procs.rank])
        else:  # saved by another number of processes: a fresh, distinct stream per process
            log.info("random states of %d process(es) reseeded for %d", len(rngs), self.procs.world)
            seed_everything(step * 1_000_003 + self.procs.rank)
        return step, int(state.get("skipped", 0))


class Checkpoints:
    """A run folder's checkpoints (`checkpoints/step_<step>.pt`, `last.pt`, the newest
    `keep_last` kept), serialized at their step and written in the background; as a context
    manager, leaving waits for every write."""

    def __init__(self, run: Outputs, keep_last: int | None, state: TrainingState) -> None:
        self.run, self.keep_last, self.state = run, keep_last, state
        self.folder = run.path(FOLDER)
        self.writer: BackgroundWriter | None = None  # its thread runs while entered

    def save(self, step: int, skipped: int) -> Path:
        """Serialize the checkpoint of `step` now (the next steps change the weights while its
        bytes are written) and queue its write; return its path."""
        name = f"step_{step:07d}.pt"
        state = self.state.state_dict(step, skipped)
        if state is not None:
            data = checkpoint_bytes(state)
            self.writer.submit(partial(_write_checkpoint, self.run, data, name, self.keep_last))
        return self.folder / name

    def save_best(self, step: int, best: dict[str, Any]) -> None:
        """Queue `checkpoints/best.pt`: the weights and config of `step`, where the kept metric
        (`best`: name, value, step) was best so far, for eval, sample and export (not a resume
        point: it holds no optimizer or RNG state, and it is written by the main process alone,
        so that evaluations on the main process need no collective)."""
        state = {"step": step, "model": self.state.model.state_dict(), "best": best}
        data = checkpoint_bytes({**state, **self.state.extra})
        self.writer.submit(partial(self.run.write, f"{FOLDER}/best.pt", data))

    def best_so_far(self) -> dict[str, Any] | None:
        """The record of `checkpoints/best.pt` written by this run folder's earlier runs."""
        self.wait()
        if f"{FOLDER}/best.pt" not in self.run.owned():
            return None
        with contextlib.suppress(Exception):  # unreadable: a fresh best.pt comes soon
            return load_checkpoint(self.run.path(f"{FOLDER}/best.pt")).get("best")
        return None

    def wait(self) -> None:
        """Until every queued checkpoint is on disk (a failed write raises here; once left, all
        are)."""
        if self.writer is not None:
            self.writer.wait()

    def last_good(self) -> str:
        """Once the queued writes are on disk: where the last checkpoint is, for a message."""
        self.wait()
        last = self.folder / "last.pt"
        if not last.is_file():
            return "no checkpoint was written"
        return f"the last good checkpoint is {last}"

    def __enter__(self) -> Checkpoints:
        self.writer = BackgroundWriter().__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        writer, self.writer = self.writer, None
        writer.__exit__(*exc)


class BestKept:
    """`trainer.keep_best`: the metric `name` (one logged or evaluated), its best value so far
    (`mode` min or max) and its step, as Lightning's ModelCheckpoint keeps them; each
    improvement writes `checkpoints/best.pt`, and later checkpoints hold the record, so that a
    resumed run goes on comparing."""

    def __init__(self, name: str, mode: str, state: TrainingState) -> None:
        self.name, self.mode, self.state = name, mode, state
        self.record: dict[str, Any] | None = None  # name, value, step

    def offer(self, step: int, values: dict[str, float], checkpoints: Checkpoints) -> None:
        """Keep `step` if `values` holds the metric at a better value than the best so far (on
        the main process: the one that evaluates)."""
        value = values.get(self.name)
        if value is None or not math.isfinite(value):
            return
        if self.record is not None:
            best = self.record["value"]
            if not (value < best if self.mode == "min" else value > best):
                return
        self.record = {"name": self.name, "value": value, "step": step}
        self.state.extra["best"] = self.record
        checkpoints.save_best(step, self.record)

    def resume(self, state: dict[str, Any], checkpoints: Checkpoints) -> None:
        """The best so far of a resumed run: its checkpoint's record, or that of a best.pt the
        run folder got after it; none where another metric was kept."""
        records = [state.get("best"), checkpoints.best_so_far()]
        kept = [r for r in records if isinstance(r, dict) and r.get("name") == self.name]
        if kept:
            self.record = max(kept, key=lambda r: r["step"])
            self.state.extra["best"] = self.record


def _write_checkpoint(run: Outputs, data: bytes, name: str, keep_last: int | None) -> None:
    """Write a serialized checkpoint `name`, point `last.pt` at it, and delete all but the
    `keep_last` newest periodic checkpoints (None: keep them all) and what killed writes left."""
    run.write(f"{FOLDER}/{name}", data)
    run.copy(f"{FOLDER}/{name}", f"{FOLDER}/last.pt")
    run.remove_temporary(FOLDER)
    if keep_last is not None:  # genlab's own (a file of the same name planted there is kept)
        periodic = sorted(p for p in run.owned() if p.startswith(f"{FOLDER}/step_"))
        periodic = [p for p in periodic if run.path(p).is_file()]
        run.remove(periodic[: max(0, len(periodic) - keep_last)])


def _settings(state: Any) -> Any:
    """An optimizer param group's or a scheduler's settings (those of a chained scheduler's
    parts too): what its config decides, without its progress."""
    if isinstance(state, dict):
        return {k: _settings(v) for k, v in state.items() if k not in {"params", "lr", *_PROGRESS}}
    if isinstance(state, list):
        return [_settings(v) for v in state]
    return state


def _apply_settings(optimizer: Optimizer, groups: list[dict], network: str, step: int) -> None:
    """Give the loaded param groups the config's settings (`groups`), logging each change."""
    for group, settings in zip(optimizer.param_groups, groups, strict=True):
        for key, value in settings.items():
            if group.get(key) != value:
                old, group[key] = group.get(key), value
                shown = "lr" if key == "initial_lr" else key
                log.info("%s %s: %s -> %s from step %d", network, shown, old, value, step)


def _replay(scheduler, optimizer, fresh: dict[str, Any], lrs: list[float], step: int) -> None:
    """Put `scheduler` (and its optimizer's learning rates) where this run's schedule is after
    `step` steps: from its start, stepped `step` times."""
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    scheduler.load_state_dict(fresh)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stepped without optimizer steps
        for _ in range(step):
            scheduler.step()


def _log_schedule_change(saved: dict, fresh: dict, optimizer, network: str, step: int) -> None:
    changed = sorted(  # base_lrs follow the learning rate, logged with the optimizer's settings
        k
        for k in (saved.keys() | fresh.keys()) - _PROGRESS - {"base_lrs"}
        if _settings(saved.get(k)) != _settings(fresh.get(k))
    )
    if changed:
        log.info(
            "%s schedule changed (%s): learning rate %s at step %d",
            network,
            ", ".join(f"{k}: {saved.get(k)} -> {fresh.get(k)}" for k in changed),
            optimizer.param_groups[0]["lr"],
            step,
        )
