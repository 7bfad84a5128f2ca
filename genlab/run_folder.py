"""Run folders as training writes them: one run writes a folder at a time, and a new run never
writes over an earlier one (`genlab.loading` reads them back).

Training holds its folder (`RunFolder`) before it writes anything: its lock (`genlab.lock`)
keeps a second run out, and `claim` refuses a folder that already holds a run unless this run
continues it (`trainer.resume=auto`, or a checkpoint inside it) or replaces it
(`trainer.overwrite=true`: only the files genlab listed writing there go, `genlab.files`). The
run's own files (`.hydra/`, `run.json`, `train.log`) are written from `start` on, once every
check has passed: a refused command leaves every file as it was and creates none.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from omegaconf import DictConfig, OmegaConf

from genlab.errors import GenlabError, TrialPruned, writing
from genlab.files import MANIFEST, Outputs
from genlab.lock import LOCK, hold, release
from genlab.record import RECORD, write_record

try:
    import fcntl
except ImportError:  # Windows: runs are not locked
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

# What a run writes besides its log and .hydra/: a folder holding any of these holds a run.
ARTIFACTS = ("checkpoints", "samples", "tb", "eval", "export", RECORD)
# The files every run writes under these names, which a new run must not find of someone else's.
RUN_FILES = (RECORD, "train.log", *(f".hydra/{n}.yaml" for n in ("config", "hydra", "overrides")))
# Run folders this process made (`genlab.callbacks` makes the run's before `genlab train` runs):
# a run refused in such a folder removes it if it is left empty.
made_here: set[Path] = set()


class RunLog(logging.FileHandler):
    """`train.log`, Hydra's job log file under `genlab train`: records wait in memory until the
    run starts, so a refused run writes nothing; a failed write (a full disk) is reported once on
    stderr instead of a traceback per record, and the log goes on on the console."""

    def __init__(self, filename: str, mode: str = "a", encoding: str | None = None) -> None:
        super().__init__(filename, mode, encoding, delay=True)
        self.held: list[logging.LogRecord] | None = []
        self.failed = False

    def _open(self):
        """The log, appended to as one of genlab's files (never through a link)."""
        folder, name = os.path.split(self.baseFilename)
        return Outputs(folder).append(name, self.encoding)

    def emit(self, record: logging.LogRecord) -> None:
        if self.held is not None:
            self.held.append(record)
        elif not self.failed:
            super().emit(record)

    def open_log(self) -> None:
        """Write the records held so far, and every later one."""
        held, self.held = self.held or [], None
        for record in held:
            self.emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        if not self.failed:
            self.failed = True
            sys.stderr.write(
                f"genlab: cannot write {self.baseFilename} ({sys.exc_info()[1]}); "
                "the log goes on on the console only\n"
            )


class RunFolder:
    """The folder one training run writes (on the main process; elsewhere every method does
    nothing). As a context manager it holds the folder's lock, and on leaving with an error it
    records the run as `failed` or `interrupted` in `run.json` if the run had started, or, with
    `keep_failed` (a sweep's job), if the folder held no earlier run. Otherwise a run that ends
    before it starts writes nothing, and removes the folder if it leaves it empty."""

    def __init__(
        self,
        path: str | Path,
        *,
        main: bool = True,
        record: dict[str, Any] | None = None,
        keep_failed: bool = False,
    ) -> None:
        self.path, self.main, self.keep_failed = Path(path), main, keep_failed
        self.outputs = Outputs(self.path)
        self.record = dict(record or {})
        self.started = False
        self._fd: int | None = None
        self._replace = self._adopt = False
        self._made_lock = False
        self._t0 = time.perf_counter()

    def __enter__(self) -> RunFolder:
        if self.main:
            with writing(self.path):
                if not self.path.exists():
                    made_here.add(self.path.absolute())
                self.path.mkdir(parents=True, exist_ok=True)
                self._made_lock = not os.path.lexists(self.path / LOCK)
                self._fd = hold(self.path)
        return self

    def holds_run(self) -> list[str]:
        """The files and folders of an earlier run in this folder."""
        found = []
        for name in ARTIFACTS:
            path = self.path / name
            if path.is_file() or (path.is_dir() and any(path.iterdir())):
                found.append(name)
        return found

    def claim(self, resume: str | None, overwrite: bool) -> None:
        """Refuse a folder that holds an earlier run, unless `resume` continues it (`auto`, or a
        checkpoint inside it) or `overwrite` replaces it: the files genlab wrote there are
        deleted at `start`, and a folder holding anything else is refused with the list. A run
        also refuses a folder where a file of its own names (`RUN_FILES`) is someone else's."""
        found = self.holds_run() if self.main else []
        if found and not self._continues(resume):
            if not overwrite:
                raise GenlabError(
                    f"{self.path} already holds a run ({', '.join(found)}), which a new run "
                    "would overwrite. Continue it with trainer.resume=auto, replace it with "
                    "trainer.overwrite=true (the files genlab wrote there are deleted first), "
                    "or choose another folder with hydra.run.dir=..."
                )
            self.outputs.check_clear([LOCK], "trainer.overwrite=true: ")
            self._replace = True
            return
        if found and not os.path.lexists(self.path / MANIFEST):
            self._adopt = True  # a run from before genlab listed its files: continued as its own
            return
        if self.main:
            self.outputs.refuse_foreign(RUN_FILES, "choose another folder with hydra.run.dir=...")

    def _continues(self, resume: str | None) -> bool:
        if resume is None:
            return False
        if resume == "auto":
            return True
        return Path(resume).expanduser().resolve().is_relative_to(self.path.resolve())

    def start(self, cfg: DictConfig | None = None, **fields: Any) -> None:
        """The run begins writing: the replaced run's files go, `.hydra/` gets this run's config,
        `run.json` says `running`, and the held log lines reach `train.log`."""
        if not self.main:
            return
        if self._replace:
            self.outputs.clear(ignore=[LOCK])
        if self._adopt:
            found = [r for r in self.outputs.foreign([LOCK]) if not (self.path / r).is_symlink()]
            self.outputs.record(found)
            log.info("%s: the earlier run's %d files listed in %s", self.path, len(found), MANIFEST)
        if cfg is not None:
            _write_hydra_files(self.outputs, cfg)
        self._write(status="running", started=time.time(), **fields)
        for handler in _run_logs(self.path):
            handler.open_log()
        self.started = True
        if self._replace:
            log.info("Replaced the earlier run in %s (trainer.overwrite=true)", self.path)

    def finish(self, **fields: Any) -> None:
        self.record.pop("reason", None)
        self._write(status="finished", **fields)

    def _write(self, **fields: Any) -> None:
        if self.main:
            self.record.update(fields, wall_time_s=time.perf_counter() - self._t0)
            write_record(self.path, self.record)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self.main:
            return
        try:
            if error is not None and (self.started or (self.keep_failed and not self.holds_run())):
                status, reason = outcome(error)
                try:
                    self._write(status=status, reason=reason)
                except GenlabError as e:  # the disk that failed the run fails this too
                    log.error("%s", e)
                for handler in _run_logs(self.path):
                    handler.open_log()
            elif not self.started:  # refused: leave nothing behind
                for handler in _run_logs(self.path):
                    handler.held = []
                if self._made_lock:
                    (self.path / LOCK).unlink(missing_ok=True)
                if self.path.absolute() in made_here:
                    _remove_if_empty(self.path)
        finally:
            if self._fd is not None:
                release(self._fd)
                self._fd = None


def outcome(error: BaseException) -> tuple[str, str]:
    """The status (`interrupted` or `failed`) and reason a run that raised `error` ends with."""
    if isinstance(error, KeyboardInterrupt):
        return (
            "interrupted",
            f"{str(error) or 'SIGINT'} outside the training loop, or a second signal",
        )
    if isinstance(error, TrialPruned):
        return "pruned", str(error)
    if isinstance(error, SystemExit):
        return "interrupted", str(getattr(error, "reason", None) or f"exit code {error.code}")
    return "failed", str(error).strip() or type(error).__name__


def _run_logs(folder: Path) -> list[RunLog]:
    """The `train.log` handlers that write into `folder`."""
    where = os.path.realpath(folder)
    return [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, RunLog) and os.path.dirname(os.path.realpath(h.baseFilename)) == where
    ]


def _write_hydra_files(folder: Outputs, cfg: DictConfig) -> None:
    """`.hydra/config.yaml`, `hydra.yaml` and `overrides.yaml`, as Hydra writes them (train.yaml
    sets `hydra.output_subdir: null` so that Hydra does not, before genlab's checks)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    parts = {
        "config.yaml": cfg,
        "hydra.yaml": HydraConfig.instance().cfg,
        "overrides.yaml": HydraConfig.get().overrides.task,
    }
    for name, node in parts.items():
        folder.write(f".hydra/{name}", OmegaConf.to_yaml(node).encode())


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


# --- reading a run --------------------------------------------------------------------------------
