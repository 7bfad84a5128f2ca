"""The generic training loop: steps, intervals, guards, progress, sample grids and checkpoints.

It knows nothing of model families: it asks `genlab.models.base.Family` for each step, grid and
metric, and hands checkpoints to `training_state`, non-finite updates to `guard` and signals to
`interrupts`.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch.optim.lr_scheduler import LRScheduler
from tqdm.auto import tqdm

from genlab import distributed
from genlab.checkpoint import own_random_streams, seed_everything
from genlab.data import DeviceLoader, ImageData, ImageFiles, StreamLoader
from genlab.data.degrade import Degradation
from genlab.data.loader import Batch, normalize
from genlab.device import set_determinism
from genlab.distributed import Processes
from genlab.errors import GenlabError, require_at_least
from genlab.files import Outputs
from genlab.guard import NonFiniteGuard, StepUndo
from genlab.images import png_bytes
from genlab.interrupts import CaughtSignals, EvaluationInterrupted, StoppedAtSignal
from genlab.logger import NullLogger
from genlab.models.base import Family, GridInputs, check_replicas, distribute
from genlab.optim import NonFiniteError, Precision, Updater, precision_dtype
from genlab.progress import Speed, log_line, short
from genlab.training_state import BestKept, Checkpoints, TrainingState

log = logging.getLogger(__name__)


class Trainer:
    """Training settings (the `trainer` config group) and the loop that applies them.

    A step is one generator update (and the `n_critic` discriminator updates before it), or one
    VAE update. Training stops at `max_steps` or `max_epochs`, whichever comes first. Intervals of
    0 mean "only at the end"; `eval_every=null` never evaluates. `resume` is `auto` (this run
    folder's last checkpoint, if any) or the path of a checkpoint or run folder; `overwrite` lets
    a new run replace an earlier one in its folder (`run_folder.RunFolder.claim`). `on_nan`:
    `stop` ends the run at the first NaN or infinite loss or gradient, `skip` leaves that step
    out (weights, buffers and EMA as before it: `guard.StepUndo`) and goes on (and fails the run
    if every update of a network in its last logging window was left out). `precision`: 32,
    `bf16` or `16-mixed` (see `optim.Updater`); `channels_last` stores images and convolution
    weights NHWC; `compile` runs the networks through `torch.compile` (true: inductor, or a
    backend's name). `deterministic` selects deterministic kernels (torch
    warns about any op that has none), which exact resume on CUDA needs; otherwise cuDNN
    benchmarks its convolution algorithms. `num_workers` DataLoader processes read data sets that
    stream from disk (`image_folder` with `stream`). Under torchrun, `batch_size` is per process."""

    def __init__(
        self,
        max_steps: int | None = 2000,
        max_epochs: int | None = None,
        batch_size: int = 64,
        log_every: int = 50,
        sample_every: int = 500,
        ckpt_every: int = 1000,
        eval_every: int | None = 0,
        keep_last: int | None = 3,
        grid_images: int = 64,
        seed: int = 0,
        resume: str | None = None,
        force_resume: bool = False,
        overwrite: bool = False,
        on_nan: Literal["stop", "skip"] = "stop",
        grad_clip: float | None = None,
        precision: Precision = "32",
        channels_last: bool = False,
        compile: bool | str = False,
        deterministic: bool = False,
        num_workers: int = 4,
        progress: bool = True,
        keep_best: str | None = None,
        keep_best_mode: Literal["min", "max"] = "min",
    ) -> None:
        require_at_least(
            1,
            max_steps=max_steps,
            max_epochs=max_epochs,
            batch_size=batch_size,
            log_every=log_every,
            keep_last=keep_last,
            grid_images=grid_images,
        )
        require_at_least(
            0,
            sample_every=sample_every,
            ckpt_every=ckpt_every,
            eval_every=eval_every,
            seed=seed,
            num_workers=num_workers,
        )
        if grid_images > 1024:
            raise ValueError(f"grid_images must be <= 1024, got {grid_images}")
        if seed >= 2**32:
            raise ValueError(f"seed must be < 2**32 (4294967296), got {seed}")
        if max_steps is None and max_epochs is None:
            raise ValueError("set max_steps or max_epochs (both are null)")
        if on_nan not in ("stop", "skip"):
            raise ValueError(f"on_nan must be 'stop' or 'skip', got {on_nan!r}")
        if keep_best_mode not in ("min", "max"):
            raise ValueError(f"keep_best_mode must be 'min' or 'max', got {keep_best_mode!r}")
        if keep_best and keep_best.startswith("eval/") and eval_every is None:
            raise ValueError(
                f"keep_best={keep_best} needs evaluations: set trainer.eval_every=N (or 0, "
                "the end only)"
            )
        self.keep_best, self.keep_best_mode = keep_best or None, keep_best_mode
        if grad_clip is not None and grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0 or null, got {grad_clip}")
        self.max_steps, self.max_epochs = max_steps, max_epochs
        self.batch_size, self.seed, self.grid_images = batch_size, seed, grid_images
        self.log_every, self.sample_every, self.ckpt_every = log_every, sample_every, ckpt_every
        self.eval_every = eval_every
        self.keep_last, self.resume, self.force_resume = keep_last, resume, force_resume
        self.overwrite = overwrite
        if isinstance(compile, str):
            backends = torch.compiler.list_backends(exclude_tags=())
            if compile not in backends:
                raise ValueError(
                    f"compile must be true, false or a torch.compile backend "
                    f"({', '.join(torch.compiler.list_backends())}, eager, aot_eager), "
                    f"got {compile!r}"
                )
        precision_dtype(precision)  # a ValueError for an unknown setting, before any work
        self.on_nan, self.progress, self.grad_clip = on_nan, progress, grad_clip
        self.precision, self.channels_last = str(precision), channels_last
        self.compile = "inductor" if compile is True else compile or None
        self.deterministic, self.num_workers = deterministic, num_workers

    def loader(
        self,
        data: ImageData | ImageFiles,
        device: torch.device,
        procs: Processes,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
        degrade: Degradation | None = None,
    ) -> DeviceLoader:
        """Batches of `batch_size` from this process's shard of `data`, on `device` (read by
        `num_workers` DataLoader processes when `data` streams from disk), paired with their
        conditions by `degrade` where the model generates from an image."""
        kwargs = {"num_workers": self.num_workers} if isinstance(data, ImageFiles) else {}
        return (StreamLoader if kwargs else DeviceLoader)(
            data,
            self.batch_size,
            device,
            self.seed,
            rank=procs.rank,
            world=procs.world,
            memory_format=torch.channels_last if self.channels_last else torch.contiguous_format,
            augment=augment,
            degrade=degrade,
            **kwargs,
        )

    def total_steps(self, batches_per_epoch: int, batches_per_step: int) -> int:
        limits = [self.max_steps or math.inf]
        if self.max_epochs is not None:
            limits.append(max(1, self.max_epochs * batches_per_epoch // batches_per_step))
        return int(min(limits))

    def fit(
        self,
        model: Family,
        optimizers: dict[str, torch.optim.Optimizer],
        schedulers: dict[str, LRScheduler],
        loader: DeviceLoader,
        *,
        run_dir: Path,
        logger: NullLogger,
        procs: Processes | None = None,
        state: dict[str, Any] | None = None,
        extra_state: dict[str, Any] | None = None,
        resume_hint: str = "",
        evaluate: Callable[[], dict[str, float]] | None = None,
        on_start: Callable[[int], None] | None = None,
        on_evaluated: Callable[[int, dict[str, float], bool], None] | None = None,
    ) -> dict[str, float]:
        """Train on `loader`'s device (from `state`, a loaded checkpoint, when given), writing
        grids to `samples/` and checkpoints to `checkpoints/` (rank 0 only); return the last
        logged values, the last evaluation's metrics (`eval/...`) and the `step`. `evaluate` runs
        the cheap metrics at `eval_every`; `on_start(step)` is called once the checkpoint is
        restored, before the loop writes anything, `on_evaluated(step, scores, last)` after each
        logged evaluation (a search's pruner may stop it there); the caller closes `logger`."""
        procs = procs or Processes()
        run = self._setup(model, optimizers, schedulers, loader, run_dir, logger, procs)
        run.training.extra = extra_state or {}  # written into every checkpoint
        self._resume(run, state, procs)
        if on_start is not None:
            on_start(run.start)
        log.info("%d steps of %d images", run.total, run.speed.images_per_step)
        values: dict[str, float] = {}
        with CaughtSignals() as stop, warnings.catch_warnings(), run.checkpoints:
            # a frozen network, or a skipped update, steps its scheduler without its optimizer
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step")
            bar = self._progress(run, procs)
            for step in range(run.start + 1, run.total + 1):
                last = step == run.total
                log_step = self._due(step, self.log_every, last)
                metrics = self._train_step(run, step, log_step)
                if step == run.start + 1:  # the time left: from the steps after the first,
                    began = time.perf_counter()  # which may build (compile, reflow's pairs)
                if procs.distributed and step == run.start + 1:
                    check_replicas(run.model)  # every network ran through its DDP wrapper
                if log_step and metrics is not None:
                    values = self._log(run, metrics, step)
                    if procs.main and run.best is not None:
                        run.best.offer(step, values, run.checkpoints)
                    bar.set_postfix(short(values), refresh=False)
                    if bar.disable and procs.main:  # a line a job's log file can read instead
                        log.info(
                            "%s",
                            log_line(
                                step, run.start + 1, run.total, values, time.perf_counter() - began
                            ),
                        )
                if procs.main and self._due(step, self.sample_every, last):
                    self._sample(run, step)
                if self._due(step, self.ckpt_every, last):  # before an evaluation (a signal
                    run.save(step)  # may cut it short)
                if evaluate and procs.main and self._evaluates(step, last) and not stop:
                    scores = self._evaluate(evaluate, stop, run.logger, step)
                    values.update(scores)
                    if run.best is not None:
                        run.best.offer(step, scores, run.checkpoints)
                    if on_evaluated and scores:
                        on_evaluated(step, scores, last)
                bar.update(1)
                if not last and self._stopping(stop, procs, run.device, log_step):
                    bar.close()
                    self._stop(run, stop, step, procs, resume_hint)
            bar.close()
        run.guard.finish()
        log.info("Finished %d steps: %s", run.total, short(values))
        if run.best is not None and run.best.record is not None:
            name, value, at = (run.best.record[k] for k in ("name", "value", "step"))
            log.info(
                "Best %s %.6g at step %d: %s", name, value, at, run.checkpoints.folder / "best.pt"
            )
            values.update({f"best/{name}": value, "best/step": at})
        return {**values, "step": run.total}

    # --- the loop's parts -----------------------------------------------------------------------

    def _setup(self, model, optimizers, schedulers, loader, run_dir, logger, procs) -> _Run:
        """The model on its device, in training mode and memory format, and what the loop uses."""
        device = loader.device
        set_determinism(self.deterministic, device)
        model.to(device).train()
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        update = Updater(optimizers, device, self.precision, self.grad_clip, model.roles)
        examples = self.examples(loader)
        per_step = model.batches_per_step()
        training = TrainingState(model, optimizers, schedulers, update, loader, procs)
        outputs = Outputs(run_dir)
        checkpoints = Checkpoints(outputs, self.keep_last, training)
        return _Run(
            model=model,
            schedulers=schedulers,
            loader=loader,
            update=update,
            logger=logger,
            outputs=outputs,
            device=device,
            training=training,
            checkpoints=checkpoints,
            speed=Speed(loader.global_batch * per_step, device),
            fixed=model.fixed_inputs(self.grid_images, examples, seed=self.seed),
            total=self.total_steps(loader.batches_per_epoch, per_step),
            best=BestKept(self.keep_best, self.keep_best_mode, training)
            if self.keep_best
            else None,
        )

    def examples(self, loader: DeviceLoader) -> Batch:
        """Held-out-like images spread through the data set for the grids, with their conditions
        where the model generates from an image."""
        images = normalize(loader.examples(self.grid_images))
        if loader.degrade is None:
            return images, None
        gen = torch.Generator(device=images.device).manual_seed(self.seed)
        return images, loader.degrade(images, gen)

    def _resume(self, run: _Run, state: dict[str, Any] | None, procs: Processes) -> None:
        """Seed each process, load the checkpoint (if any), then compile the family's networks
        and wrap them for DDP."""
        if procs.distributed:  # every process draws its own noise
            seed_everything(self.seed + 1_000_003 * procs.rank)
        run.start, skipped = run.training.load(state) if state is not None else (0, 0)
        if state is not None and run.best is not None:
            run.best.resume(state, run.checkpoints)
        if state is not None:
            log.info("Resumed at step %d of %d", run.start, run.total)
        run.guard = NonFiniteGuard(
            run.update, self.on_nan, run.start, skipped, run.logger, run.checkpoints.last_good
        )
        run.undo = StepUndo(run.model, run.update) if self.on_nan == "skip" else None
        if self.compile:
            for net in run.model.compile_targets():
                net.compile(backend=self.compile)
        if procs.distributed:
            distribute(run.model, distributed.wrapper(run.device))

    def _progress(self, run: _Run, procs: Processes) -> tqdm:
        """The bar, on a terminal only: elsewhere (a cluster job's log file, or
        `trainer.progress=false`) each logging step is a log line."""
        return tqdm(
            total=run.total,
            initial=run.start,
            disable=not (self.progress and procs.main and sys.stderr.isatty()),
            unit="step",
            dynamic_ncols=True,
        )

    def _train_step(self, run: _Run, step: int, log_step: bool) -> dict[str, torch.Tensor] | None:
        """One step of the family, the schedulers' step, and the guard at logging steps."""
        if run.undo is not None:
            run.undo.keep()
        try:
            metrics = run.model.train_step(run.loader, run.update, metrics=log_step)
        except NonFiniteError as e:
            run.guard.host_skip(step, e)
            metrics = None
            if run.undo is not None:
                run.undo.undo(always=True)
        except torch._dynamo.exc.BackendCompilerFailed as e:
            raise GenlabError(
                f"trainer.compile={self.compile}: torch.compile failed on this machine "
                f"({str(e).strip().splitlines()[0]}); set trainer.compile=false"
            ) from None
        else:
            if run.undo is not None:
                run.undo.undo()
        for scheduler in run.schedulers.values():
            scheduler.step()
        run.speed.steps += 1
        if log_step:
            run.guard.check(step, window_end=True)
        return metrics

    @staticmethod
    def _stopping(stop: CaughtSignals, procs: Processes, device, log_step: bool) -> bool:
        """Whether a signal asks the run to stop (under torchrun the processes agree on it at
        logging steps only)."""
        if not procs.distributed:
            return bool(stop)
        return log_step and distributed.any_rank(bool(stop), procs, device)

    @staticmethod
    def _stop(run: _Run, stop: CaughtSignals, step: int, procs: Processes, hint: str) -> None:
        """Save the checkpoint of `step`, say how to continue, and exit (`StoppedAtSignal`)."""
        path = run.save(step)
        run.checkpoints.wait()
        name = stop.signal.name
        (log.warning if procs.main else log.debug)(
            "%s at step %d: checkpoint saved to %s. Resume with:\n  %s",
            name,
            step,
            path,
            hint or "genlab train ... trainer.resume=auto",
        )
        raise StoppedAtSignal(stop.signal, f"{name} at step {step}; checkpoint saved to {path}")

    @staticmethod
    def _due(step: int, every: int, last: bool) -> bool:
        """Whether an action `every` steps (0: only at the end) is due at `step`."""
        return bool(every and step % every == 0) or last

    def _evaluates(self, step: int, last: bool) -> bool:
        return self.eval_every is not None and self._due(step, self.eval_every, last)

    @staticmethod
    def _log(run: _Run, metrics: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        """The logging step's values (a host sync): the family's metrics, images/s, epoch,
        learning rates and loss scales, to the logger and to the family's `on_log`."""
        loader, update = run.loader, run.update
        values = {k: float(v) for k, v in metrics.items()}
        values["perf/images_per_s"] = run.speed.images_per_s()
        values["perf/epoch"] = loader.epoch + loader.index / loader.batches_per_epoch
        values.update({f"lr/{k}": o.param_groups[0]["lr"] for k, o in update.optimizers.items()})
        if update.dtype is torch.float16:
            values.update({f"amp/scale_{k}": update.loss_scale(k) for k in update.optimizers})
            values["amp/overflows"] = update.overflows
        run.logger.log_scalars(values, step)
        run.model.on_log(values, step)
        return values

    @staticmethod
    def _sample(run: _Run, step: int) -> None:
        """The family's grids from the run's fixed inputs, as PNGs and in TensorBoard."""
        with own_random_streams():
            grids = run.model.sample_grids(run.fixed)
        for name, grid in grids.items():
            png = png_bytes(grid)
            run.outputs.write(f"samples/{name}_{step:07d}.png", png)
            run.logger.log_png(name, png, grid.shape, step)

    @staticmethod
    def _evaluate(evaluate, stop: CaughtSignals, logger, step: int) -> dict[str, float]:
        """The cheap metrics, on random streams of their own; a signal stops them at once."""
        try:
            with stop.interruptible(), own_random_streams():
                scores = {f"eval/{k}": float(v) for k, v in evaluate().items()}
        except EvaluationInterrupted as e:
            log.warning("step %d: %s stopped the evaluation", step, e)
            return {}
        logger.log_scalars(scores, step)
        log.info("step %d: %s", step, short(scores))
        return scores


@dataclass
class _Run:
    """What one `fit` works with."""

    model: Family
    schedulers: dict[str, LRScheduler]
    loader: DeviceLoader
    update: Updater
    logger: NullLogger
    outputs: Outputs  # the run folder
    device: torch.device
    training: TrainingState
    checkpoints: Checkpoints
    speed: Speed
    fixed: GridInputs
    total: int
    start: int = 0
    best: BestKept | None = None  # trainer.keep_best
    guard: NonFiniteGuard = field(init=False)  # once the checkpoint is loaded
    undo: StepUndo | None = field(init=False)  # with on_nan=skip

    def save(self, step: int) -> Path:
        """The checkpoint of `step`, once the guard has seen the updates before it."""
        self.guard.check(step)
        return self.checkpoints.save(step, self.guard.skipped)
