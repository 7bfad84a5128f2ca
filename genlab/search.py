"""genlab's Optuna search (`hydra/sweeper=optuna`, the `hparams_search=` presets): one study in a
storage that any number of workers share, run trial by trial through Optuna's ask-and-tell API,
each trial a genlab run in `hydra.sweep.dir/<trial number>`; and the trial a run reports its
evaluations to, so that the study's pruner can stop a hopeless one.

A worker is one `genlab train hparams_search=...` process: it asks the study for a trial, trains
it in this process, tells the study its objective, and goes on until the study holds `n_trials`
trials. Workers that share `storage` and the sweep folder run one study's trials side by side,
each at its own pace (none waits for a batch). Asking is serialised by a lock file in the sweep
folder (`.study/ask.lock`), so `n_trials` is exact and a grid sampler never hands one point to two
workers; each worker holds `.study/trial-N.lock` while its trial N runs. A running trial whose
lock nobody holds was left by a worker that died (killed, its machine lost): the next worker to
ask records it failed, or runs its parameters again (`retry_failed`).

Optuna is imported only here, by a search.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genlab.errors import ConfigError, TrialPruned, cannot_write
from genlab.lock import held, holder
from genlab.search_space import build, sampler, search_space, trial_overrides

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

STUDY_DIR = ".study"  # in the sweep folder: the locks of asking and of each running trial
SQLITE = (".db", ".sqlite", ".sqlite3")
SWEEPER = "hydra_plugins.genlab_optuna.optuna_sweeper.OptunaSweeper"

_active: optuna.Trial | None = None  # the trial the run in this process trains


def storage(spec: str | None) -> Any:
    """Optuna's storage for `hydra.sweeper.storage`: None (this process only), an RDB URL
    (`postgresql://...`, `mysql+pymysql://...`, `sqlite:///...`), a path ending .db, .sqlite or
    .sqlite3 (SQLite, one machine), or any other path: Optuna's journal file (a shared file
    system, NFS included)."""
    if spec is None:
        return None
    if "://" in spec:
        return spec
    path = Path(spec).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise cannot_write(path.parent, e) from None
    if path.suffix in SQLITE:
        return f"sqlite:///{path.resolve()}"
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(path)))


class Study:
    """One worker's view of the study: ask under the sweep folder's lock, and hold each trial's
    lock while it runs."""

    def __init__(
        self, study: optuna.Study, sweep_dir: Path, n_trials: int, retry_failed: int
    ) -> None:
        self.study, self.n_trials, self.retry_failed = study, n_trials, retry_failed
        self.locks = study_folder(sweep_dir)

    @contextlib.contextmanager
    def next_trial(self, space: Mapping[str, Any]) -> Iterator[optuna.Trial | None]:
        """The next trial to run (an enqueued one first), its lock held while the block runs;
        None once the study holds `n_trials` trials (finished, pruned, failed or running)."""
        with asking(self.locks):
            self.end_abandoned()
            if self.counted() >= self.n_trials:
                trial = None
            else:
                trial = self.study.ask(dict(space))
                lock = contextlib.ExitStack()
                lock.enter_context(held(self.locks / f"trial-{trial.number}.lock"))
        if trial is None:
            yield None
            return
        with lock:
            yield trial

    def counted(self) -> int:
        """The trials that count toward `n_trials`: all but those waiting to run and the failed
        ones run again."""
        trials = self.study.get_trials(deepcopy=False)
        retried = {t.user_attrs.get("retry_of") for t in trials}
        return sum(
            t.state.name != "WAITING" and (t.number not in retried or t.state.name != "FAIL")
            for t in trials
        )

    def end_abandoned(self) -> None:
        """Record failed each running trial whose worker died (its trial lock free), and run its
        parameters again as a new trial while it has retries left."""
        from optuna.trial import TrialState

        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            lock = self.locks / f"trial-{trial.number}.lock"
            if not lock.exists() or holder(lock) is not None:
                continue  # not this sweep folder's trial, or its worker is alive
            log.warning("trial %d: its worker died; recorded failed", trial.number)
            self._tell(trial.number, state=TrialState.FAIL)
            self.retry(trial)

    def retry(self, trial: optuna.trial.FrozenTrial) -> None:
        """Enqueue `trial`'s parameters again if it has retries left."""
        tries = trial.user_attrs.get("tries", 1)
        if tries > self.retry_failed:
            return
        log.info("trial %d: run again (retry %d of %d)", trial.number, tries, self.retry_failed)
        self.study.enqueue_trial(
            trial.params, user_attrs={"retry_of": trial.number, "tries": tries + 1}
        )

    def tell(self, trial: optuna.Trial, value: Any, run_dir: Path) -> None:
        """The outcome of the run in `run_dir`: pruned (its run.json says so), its objective, or
        failed (a failed run returns NaN)."""
        from optuna.trial import TrialState

        from genlab.record import RECORD

        try:
            status = json.loads((run_dir / RECORD).read_text()).get("status")
        except (OSError, ValueError, AttributeError):  # no run.json, or not a record
            status = None
        if status == "pruned":
            self._tell(trial, state=TrialState.PRUNED)
        elif isinstance(value, int | float) and math.isfinite(value):
            self._tell(trial, float(value))
        else:
            self._tell(trial, state=TrialState.FAIL)
            self.retry(self.study.get_trials(deepcopy=False)[trial.number])

    def _tell(self, trial: optuna.Trial | int, value: float | None = None, **state: Any) -> None:
        """`study.tell`; GridSampler's end of the grid is not an error here. (Its `after_trial`
        calls `study.stop()`, which raises outside `study.optimize`; the trial is stored
        first.)"""
        try:
            self.study.tell(trial, value, **state)
        except RuntimeError as e:
            if "Study.stop" not in str(e):
                raise


@contextlib.contextmanager
def active(trial: optuna.Trial) -> Iterator[None]:
    """`trial` is the one the run trained in this process reports to."""
    global _active
    _active = trial
    try:
        yield
    finally:
        _active = None


def report(metric: str | None, step: int, scores: Mapping[str, float], last: bool) -> None:
    """Report the objective `metric` of an evaluation at `step` to the active trial, if any;
    raise TrialPruned when the study's pruner stops it there (before the `last` step: a run that
    trained to its end is told as finished)."""
    trial = _active
    if trial is None or not metric or metric not in scores:
        return
    value = scores[metric]
    trial.report(value, step)
    if not last and trial.should_prune():
        raise TrialPruned(f"stopped by the study's pruner at step {step} ({metric} {value:.6g})")


def check(sweeper: Any) -> None:
    """The sweeper's keys that need no study, each refused with one message."""
    if sweeper.n_jobs < 1:
        raise ConfigError(f"hydra.sweeper.n_jobs must be at least 1, got {sweeper.n_jobs}")
    if sweeper.storage and not sweeper.study_name:
        raise ConfigError(
            f"hydra.sweeper.storage={sweeper.storage} needs hydra.sweeper.study_name: the name "
            "other workers join the study by"
        )
    if sweeper.direction not in ("minimize", "maximize"):
        raise ConfigError(
            f"hydra.sweeper.direction must be minimize or maximize, got {sweeper.direction!r}"
        )


def work_in_processes(sweeper: Any, arguments: list[str], sweep_dir: Path) -> list[Any]:
    """`n_jobs` workers of one study, each in a process of its own that runs its trials in
    itself: on this machine by joblib's loky (hydra/launcher=basic), or as submitit jobs
    (hydra/launcher=slurm: a SLURM array of workers; submitit_local). Hydra's state goes with
    them, as its launchers carry it; without a storage they share a journal file in the sweep
    folder (and the study's name `search`, unless named)."""
    import copy

    from hydra._internal.core_plugins.basic_launcher import BasicLauncher
    from hydra.core.singleton import Singleton

    kind = type(sweeper.launcher).__name__
    if kind not in ("BasicLauncher", "SlurmLauncher", "LocalLauncher"):
        raise ConfigError(
            f"hydra/launcher={kind}: the Optuna sweeper starts its hydra.sweeper.n_jobs workers "
            "as processes on this machine (hydra/launcher=basic, the default) or as submitit "
            "jobs (slurm, submitit_local), each running its trials in itself"
        )
    one = copy.copy(sweeper)
    one.n_jobs = 1
    one.storage = sweeper.storage or str(sweep_dir / STUDY_DIR / "study.log")
    one.study_name = sweeper.study_name or "search"
    one.launcher = BasicLauncher()  # each worker runs its trials in its own process
    one.launcher.setup(
        hydra_context=sweeper.hydra_context,
        task_function=sweeper.task_function,
        config=sweeper.config,
    )
    jobs = [(one, arguments, sweep_dir, Singleton.get_state())] * sweeper.n_jobs
    if kind == "BasicLauncher":
        from joblib import Parallel, delayed

        runs = Parallel(n_jobs=sweeper.n_jobs, backend="loky")(delayed(_worker)(*j) for j in jobs)
    else:
        executor = _submitit_executor(sweeper.launcher)
        submitted = executor.map_array(_worker, *zip(*jobs, strict=True))
        log.info("Workers: submitit jobs %s", ", ".join(str(j.job_id) for j in submitted))
        runs = [job.result() for job in submitted]
    return [value for run in runs for value in run]


def _submitit_executor(launcher: Any) -> Any:
    """The submitit executor of Hydra's submitit launcher `launcher`, with its parameters, as
    its own `launch` makes it (hydra_plugins.hydra_submitit_launcher)."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    cluster, params = launcher._EXECUTOR, dict(launcher.params)
    executor = submitit.AutoExecutor(
        folder=params.pop("submitit_folder"),
        cluster=cluster,
        **{f"{cluster}_max_num_timeout": params.pop("max_num_timeout")}
        if "max_num_timeout" in params
        else {},
    )
    generic = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(
        **{k if k in generic else f"{cluster}_{k}": v for k, v in params.items()}
    )
    return executor


def _worker(sweeper: Any, arguments: list[str], sweep_dir: Path, state: Any) -> list[Any]:
    from hydra.core.singleton import Singleton
    from hydra.core.utils import setup_globals

    setup_globals()
    Singleton.set_state(state)
    return work(sweeper, arguments, sweep_dir)


def work(sweeper: Any, arguments: list[str], sweep_dir: Path) -> list[Any]:
    """Run the study's trials in this process until it holds `n_trials`; the return values of
    this worker's runs. `sweeper` holds the keys of conf/hydra/sweeper/optuna.yaml and the
    launcher (Hydra's basic one: each trial in this process)."""
    import optuna

    check(sweeper)
    space, keys, fixed = search_space(sweeper.params, arguments)
    locks = study_folder(sweep_dir)
    with asking(locks):  # one worker at a time makes the storage's tables
        number = _worker_number(locks)
        study = optuna.create_study(
            study_name=sweeper.study_name,
            storage=storage(sweeper.storage),
            sampler=sampler(sweeper.sampler, space, number),
            pruner=build(sweeper.pruner, "pruner") or optuna.pruners.NopPruner(),
            direction=sweeper.direction,
            load_if_exists=True,
        )
    if study.direction.name.lower() != sweeper.direction:
        raise ConfigError(
            f"study {study.study_name!r} in {sweeper.storage} is to "
            f"{study.direction.name.lower()}, not {sweeper.direction}: "
            "set hydra.sweeper.direction (optimized_direction) alike, or name another study"
        )
    _refuse_foreign_runs(study, sweep_dir)
    worker, results = Study(study, sweep_dir, sweeper.n_trials, sweeper.retry_failed), []
    log.info(
        "Study %s (%s): %d of %d trials so far; runs in %s/<trial number>",
        study.study_name,
        sweeper.storage or "in this process",
        worker.counted(),
        sweeper.n_trials,
        sweep_dir,
    )
    while True:
        with worker.next_trial(space) as trial:
            if trial is None:
                break
            overrides = fixed + trial_overrides(trial, space, keys)
            log.info("Trial %d: %s", trial.number, " ".join(overrides))
            with active(trial):
                [ret] = sweeper.launcher.launch([overrides], initial_job_idx=trial.number)
            value = ret.return_value if ret.status.name == "COMPLETED" else math.nan
            worker.tell(trial, value, Path(ret.hydra_cfg.hydra.runtime.output_dir))
            results.append(value)
    _summarise(study, sweep_dir)
    return results


def study_folder(sweep_dir: Path) -> Path:
    """The sweep folder's `.study` folder, made if missing: the ask lock, the trials' locks, the
    workers' count."""
    locks = sweep_dir / STUDY_DIR
    locks.mkdir(parents=True, exist_ok=True)
    return locks


def asking(locks: Path) -> contextlib.AbstractContextManager[None]:
    """The study folder's ask lock, held while the block runs (waiting for another worker)."""
    return held(locks / "ask.lock")


def _worker_number(locks: Path) -> int:
    """This worker's number among those the study's folder has seen, 0 for the first (the
    caller holds the folder's ask lock)."""
    from genlab.files import write_file

    try:
        number = int((locks / "workers").read_text())
    except (OSError, ValueError):
        number = 0
    write_file(locks / "workers", str(number + 1).encode())
    return number


def _refuse_foreign_runs(study: optuna.Study, sweep_dir: Path) -> None:
    """A new study in a sweep folder that holds runs would write over them: refused."""
    from genlab.record import read_records

    held_runs = [r["run_dir"] for r in read_records(sweep_dir)] if sweep_dir.is_dir() else []
    if held_runs and not study.trials:
        raise ConfigError(
            f"the sweep folder {sweep_dir} holds runs ({', '.join(held_runs[:3])}) and the study "
            f"{study.study_name!r} has no trials: its trials would write over them. Join the "
            "study those runs belong to (hydra.sweeper.study_name, storage), or choose another "
            "folder with hydra.sweep.dir=..."
        )


def _summarise(study: optuna.Study, sweep_dir: Path) -> None:
    """Log the study's best trial and write it to `optimization_results.yaml` in the sweep
    folder (name, best parameters, best value, and the count of trials by state)."""
    from collections import Counter

    from omegaconf import OmegaConf

    from genlab.files import Outputs

    trials = study.get_trials(deepcopy=False)
    states = dict(Counter(t.state.name.lower() for t in trials))
    done = [t for t in trials if t.state.name == "COMPLETE"]
    summary: dict[str, Any] = {"name": "optuna", "study": study.study_name, "trials": states}
    if done:
        best = study.best_trial
        summary.update(best_trial=best.number, best_params=best.params, best_value=best.value)
        log.info("Best trial %d: %s, value %.6g", best.number, best.params, best.value)
    log.info("Trials: %s", ", ".join(f"{n} {s}" for s, n in states.items()))
    Outputs(sweep_dir).write("optimization_results.yaml", OmegaConf.to_yaml(summary).encode())
