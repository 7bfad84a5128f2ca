"""The generic training loop: steps, intervals, guards, progress, sample grids and checkpoints.

It knows nothing of model families: each family (GAN, VAE) provides `train_step`,
`batches_per_step`, `fixed_inputs` and `sample_grids`.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from torch.optim.lr_scheduler import LRScheduler
from tqdm.auto import tqdm

from genlab import distributed
from genlab.background import BackgroundWriter
from genlab.checkpoint import (
    checkpoint_bytes,
    copy_checkpoint,
    own_random_streams,
    prune,
    rng_state,
    seed_everything,
    set_rng_state,
    write_atomically,
)
from genlab.data import DeviceLoader, ImageData, ImageFiles, StreamLoader
from genlab.data.loader import normalize
from genlab.distributed import Processes
from genlab.errors import GenlabError
from genlab.images import save_png
from genlab.logger import NullLogger
from genlab.optim import NonFiniteError, Precision, Updater, precision_dtype

log = logging.getLogger(__name__)


class Trainer:
    """Training settings (the `trainer` config group) and the loop that applies them.

    A step is one generator update (and the `n_critic` discriminator updates before it), or one
    VAE update. Training stops at `max_steps` or `max_epochs`, whichever comes first. Intervals of
    0 mean "only at the end"; `eval_every=null` never evaluates. `resume` is `auto` (this run
    folder's last checkpoint, if any) or the path of a checkpoint or run folder; `overwrite` lets
    a new run replace an earlier one in its folder (`run_folder.RunFolder.claim`). `on_nan`:
    `stop` ends the run at the first NaN or infinite loss or gradient, `skip` leaves that update
    out and goes on (and fails the run if every update of a network in its last logging window
    was left out). `precision`: 32, `bf16` or `16-mixed` (see `optim.Updater`); `channels_last`
    stores images and convolution weights NHWC; `compile` runs the networks through `torch.compile`
    (true: inductor, or a backend's name). `deterministic` selects deterministic kernels (torch
    warns about any op that has none), which exact resume on CUDA needs; otherwise cuDNN
    benchmarks its convolution algorithms. `num_workers` DataLoader processes read data sets that
    stream from disk (`image_folder` with `stream`). Under torchrun, `batch_size` is per process.
    """

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
        num_samples: int = 64,
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
    ) -> None:
        checks = {
            "max_steps": (max_steps, 1),
            "max_epochs": (max_epochs, 1),
            "batch_size": (batch_size, 1),
            "log_every": (log_every, 1),
            "sample_every": (sample_every, 0),
            "ckpt_every": (ckpt_every, 0),
            "eval_every": (eval_every, 0),
            "keep_last": (keep_last, 1),
            "num_samples": (num_samples, 1),
            "seed": (seed, 0),
            "num_workers": (num_workers, 0),
        }
        for name, (value, low) in checks.items():
            if value is not None and value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if num_samples > 1024:
            raise ValueError(f"num_samples must be <= 1024 (a sample grid), got {num_samples}")
        if seed >= 2**32:
            raise ValueError(f"seed must be < 2**32 (4294967296), got {seed}")
        if max_steps is None and max_epochs is None:
            raise ValueError("set max_steps or max_epochs (both are null)")
        if on_nan not in ("stop", "skip"):
            raise ValueError(f"on_nan must be 'stop' or 'skip', got {on_nan!r}")
        if grad_clip is not None and grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0 or null, got {grad_clip}")
        self.max_steps, self.max_epochs = max_steps, max_epochs
        self.batch_size, self.seed, self.num_samples = batch_size, seed, num_samples
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
    ) -> DeviceLoader:
        """Batches of `batch_size` from this process's shard of `data`, on `device` (read by
        `num_workers` DataLoader processes when `data` streams from disk)."""
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
            **kwargs,
        )

    def total_steps(self, batches_per_epoch: int, batches_per_step: int) -> int:
        limits = [self.max_steps or math.inf]
        if self.max_epochs is not None:
            limits.append(max(1, self.max_epochs * batches_per_epoch // batches_per_step))
        return int(min(limits))

    def fit(
        self,
        model: Any,
        loss: Any,
        optimizers: dict[str, torch.optim.Optimizer],
        schedulers: dict[str, LRScheduler],
        loader: DeviceLoader,
        *,
        device: torch.device,
        run_dir: Path,
        logger: NullLogger,
        procs: Processes | None = None,
        state: dict[str, Any] | None = None,
        extra_state: dict[str, Any] | None = None,
        resume_hint: str = "",
        evaluate: Callable[[], dict[str, float]] | None = None,
        on_start: Callable[[int], None] | None = None,
    ) -> dict[str, float]:
        """Train (from `state`, a loaded checkpoint, when given), writing grids to `samples/` and
        checkpoints to `checkpoints/` (rank 0 only); return the last logged values, the last
        evaluation's metrics (`eval/...`) and the `step`. The caller closes `logger`. `evaluate`
        runs the cheap metrics at `eval_every`. `on_start(step)` is called once the checkpoint is
        restored, before the loop writes anything."""
        procs = procs or Processes()
        set_determinism(self.deterministic, device)
        model.to(device).train()
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        update = Updater(optimizers, device, self.precision, self.grad_clip, model.roles)
        examples = (normalize(loader.examples(self.num_samples)), None)
        fixed = model.fixed_inputs(self.num_samples, examples, seed=self.seed)
        per_step = model.batches_per_step(loss)
        total = self.total_steps(loader.batches_per_epoch, per_step)
        images_per_step = loader.global_batch * per_step
        start, skipped = 0, 0
        if procs.distributed:  # every process draws its own noise
            seed_everything(self.seed + 1_000_003 * procs.rank)
        if state is not None:
            start, skipped = _restore(state, model, optimizers, schedulers, update, loader, procs)
            log.info("Resumed at step %d of %d", start, total)
        if self.compile:
            for net in model.compile_targets(loss):
                net.compile(backend=self.compile)
        if procs.distributed:
            model.distribute(distributed.wrapper(device))
        if on_start is not None:
            on_start(start)
        ckpt_dir = run_dir / "checkpoints"
        writer = BackgroundWriter()  # checkpoint files are written while training goes on
        guard = _Guard(update, self.on_nan, start, skipped, ckpt_dir, writer, logger)

        def checkpoint(step: int) -> Path:
            guard.check(step)
            path = ckpt_dir / f"step_{step:07d}.pt"
            rngs = distributed.gather(rng_state(), procs)
            if procs.main:
                # serialized here: the next steps change the weights while the bytes are written
                data = checkpoint_bytes(
                    {
                        "step": step,
                        "model": model.state_dict(),
                        "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                        "schedulers": {k: s.state_dict() for k, s in schedulers.items()},
                        "updater": update.state_dict(),
                        "loader": loader.state_dict(),
                        "rng": rngs[0],
                        **({"rng_ranks": rngs} if procs.distributed else {}),
                        "skipped": guard.skipped,
                        **(extra_state or {}),
                    }
                )
                writer.submit(partial(_write_checkpoint, data, path, self.keep_last))
            return path

        log.info("%d steps of %d images", total, images_per_step)
        values: dict[str, float] = {}
        bar = tqdm(
            total=total,
            initial=start,
            disable=not (self.progress and procs.main),
            unit="step",
            dynamic_ncols=True,
        )
        window_start, window_steps = time.perf_counter(), 0
        with _StopRequests() as stop, warnings.catch_warnings(), writer:
            # a frozen network, or a skipped update, steps its scheduler without its optimizer
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step")
            for step in range(start + 1, total + 1):
                last_step = step == total
                log_step = step % self.log_every == 0 or last_step
                try:
                    metrics = model.train_step(loader, loss, update, metrics=log_step)
                except NonFiniteError as e:
                    guard.host_skip(step, e)
                    metrics = None
                except torch._dynamo.exc.BackendCompilerFailed as e:
                    raise GenlabError(
                        f"trainer.compile={self.compile}: torch.compile failed on this machine "
                        f"({str(e).strip().splitlines()[0]}); set trainer.compile=false"
                    ) from None
                for scheduler in schedulers.values():
                    scheduler.step()
                window_steps += 1
                if log_step:
                    guard.check(step, window_end=True)
                if metrics is not None and log_step:
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    now = time.perf_counter()
                    values = {k: float(v) for k, v in metrics.items()}
                    values["perf/images_per_s"] = (
                        window_steps * images_per_step / (now - window_start)
                    )
                    values["epoch"] = loader.epoch + loader.index / loader.batches_per_epoch
                    values.update(
                        {f"lr/{k}": o.param_groups[0]["lr"] for k, o in optimizers.items()}
                    )
                    if update.dtype is torch.float16:
                        values.update({f"amp/scale_{k}": update.loss_scale(k) for k in optimizers})
                        values["amp/overflows"] = update.overflows
                    logger.log_scalars(values, step)
                    bar.set_postfix(_short(values), refresh=False)
                    window_start, window_steps = now, 0
                    model.on_log(values, step)
                if procs.main and (
                    (self.sample_every and step % self.sample_every == 0) or last_step
                ):
                    with own_random_streams():
                        grids = model.sample_grids(fixed, loss)
                    for name, grid in grids.items():
                        path = run_dir / "samples" / f"{name}_{step:07d}.png"
                        logger.log_png(name, save_png(grid, path), grid.shape, step)
                if (self.ckpt_every and step % self.ckpt_every == 0) or last_step:
                    checkpoint(step)  # before an evaluation, which a stop request may cut short
                if (
                    evaluate is not None
                    and procs.main
                    and self.eval_every is not None
                    and ((self.eval_every and step % self.eval_every == 0) or last_step)
                    and not stop
                ):
                    try:
                        with stop.interruptible(), own_random_streams():
                            scores = {f"eval/{k}": float(v) for k, v in evaluate().items()}
                    except StopRequested as e:
                        log.warning("step %d: %s stopped the evaluation", step, e)
                    else:
                        logger.log_scalars(scores, step)
                        log.info("step %d: %s", step, _short(scores))
                        values.update(scores)
                bar.update(1)
                # Under torchrun the processes agree on stopping at logging steps only.
                stopping = (
                    bool(stop)
                    if not procs.distributed
                    else (log_step and distributed.any_rank(bool(stop), procs, device))
                )
                if stopping and not last_step:
                    path = checkpoint(step)
                    writer.wait()
                    bar.close()
                    signum = stop[0] if stop else signal.SIGTERM
                    name = signal.Signals(signum).name
                    (log.warning if procs.main else log.debug)(
                        "%s at step %d: checkpoint saved to %s. Resume with:\n  %s",
                        name,
                        step,
                        path,
                        resume_hint or "genlab train ... trainer.resume=auto",
                    )
                    raise Stopped(signum, f"{name} at step {step}; checkpoint saved to {path}")
        bar.close()
        guard.finish(total)
        log.info("Finished %d steps: %s", total, _short(values))
        return {**values, "step": total}


class Stopped(SystemExit):
    """The run stopped at a signal after saving a checkpoint; the exit status is 128 + signal."""

    def __init__(self, signum: int, reason: str) -> None:
        super().__init__(128 + signum)
        self.reason = reason


class StopRequested(BaseException):
    """A signal arrived during an evaluation, which stops at once (a BaseException, as
    KeyboardInterrupt is, so that no `except Exception` on the way swallows it)."""


class _Guard:
    """What the run does about non-finite updates: those the optimizers skipped on the device
    (collected at `check`, a host sync) and those refused on the host (`host_skip`) stop the run
    (`on_nan=stop`) or are counted and logged (`skip`). With `skip`, a run whose last logging
    window skipped every update of a network has failed (`finish`)."""

    def __init__(
        self,
        update: Updater,
        on_nan: str,
        start: int,
        skipped: int,
        ckpt_dir: Path,
        writer: BackgroundWriter,
        logger: NullLogger,
    ) -> None:
        self.update, self.on_nan, self.skipped = update, on_nan, skipped
        self.ckpt_dir, self.writer, self.logger = ckpt_dir, writer, logger
        self.since = self.window_start = start + 1
        self.window: Counter[str] = Counter()  # skipped updates per network in this window
        self.attempted = dict(update.attempted)
        self.dead: tuple[int, int, list[str]] | None = None  # the last window, if all skipped

    def _skip(self, step: int, counts: dict[str, int], what: str) -> None:
        self.window.update(counts)
        if self.on_nan == "stop":
            what += " (skipped: the weights are untouched)"
            raise _nan_stop(what, self.ckpt_dir, self.writer)
        self.skipped += sum(counts.values())
        log.warning("%s; skipped (%d so far)", what, self.skipped)
        self.logger.log_scalars({"guard/skipped_updates": self.skipped}, step)

    def host_skip(self, step: int, error: NonFiniteError) -> None:
        self._skip(step, {error.name: 1}, f"step {step}: {error}")

    def check(self, step: int, window_end: bool = False) -> None:
        """Act on the updates skipped on the device since the last check; at the end of a
        logging window, note whether every update of a network in it was skipped."""
        counts, first = self.update.collect(), self.since
        self.since = step + 1
        if counts:
            what = ", ".join(
                f"{n} non-finite {self.update.names[k]} update{'s' * (n > 1)}"
                for k, n in counts.items()
            )
            where = f"step {step}" if first == step else f"steps {first}-{step}"
            self._skip(step, counts, f"{where}: {what}")
        if window_end:
            tried = {k: n - self.attempted.get(k, 0) for k, n in self.update.attempted.items()}
            dead = [k for k, n in tried.items() if n and self.window[k] >= n]
            self.dead = (self.window_start, step, dead) if dead else None
            self.window_start, self.window = step + 1, Counter()
            self.attempted = dict(self.update.attempted)

    def finish(self, total: int) -> None:
        """Fail a run whose last logging window skipped every update of a network."""
        if self.dead is not None:
            first, last, names = self.dead
            who = " and ".join(self.update.names[k] for k in names)
            where = f"step {last}" if first == last else f"steps {first}-{last}"
            self.writer.wait()
            raise GenlabError(
                f"every {who} update of {where} was non-finite and skipped "
                f"(trainer.on_nan=skip): the run failed. Its weights are those of the last finite "
                f"update, in {self.ckpt_dir / 'last.pt'}; try a lower learning rate"
            )
        if self.skipped:
            log.warning("%d non-finite updates were skipped in this run", self.skipped)


def _write_checkpoint(data: bytes, path: Path, keep_last: int | None) -> None:
    """Write a serialized checkpoint to `path`, point `last.pt` at it and prune old periodic
    checkpoints."""
    write_atomically(data, path)
    copy_checkpoint(path, path.parent / "last.pt")
    prune(path.parent, keep_last)


def set_determinism(deterministic: bool, device: torch.device) -> None:
    """Deterministic kernels (for bit-identical runs on CUDA), or cuDNN's fastest algorithms."""
    if deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read by cuBLAS at startup
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic


def _nan_stop(what: str, ckpt_dir: Path, writer: BackgroundWriter) -> GenlabError:
    """The error that ends a run at a non-finite update (`trainer.on_nan=stop`), once the
    checkpoints being written are on disk."""
    writer.wait()
    last = ckpt_dir / "last.pt"
    kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written"
    return GenlabError(
        f"{what}. The run stops; {kept}. Set trainer.on_nan=skip to skip such updates instead."
    )


# Scheduler state that counts progress; the rest of a scheduler's state is its settings.
_PROGRESS = {"last_epoch", "_step_count", "_last_lr", "_get_lr_called_within_step", "_is_initial"}


def _restore(state, model, optimizers, schedulers, update, loader, procs) -> tuple[int, int]:
    """Load a checkpoint into the run's objects; return (step, skipped updates).

    The optimizers and schedulers keep the settings of this run's config: where the learning
    rate, another optimizer setting or the schedule changed since the checkpoint, the change is
    applied and logged, and the learning rate is that of the new schedule at this step."""
    groups = {k: [_settings(g) for g in o.param_groups] for k, o in optimizers.items()}
    fresh = {k: s.state_dict() for k, s in schedulers.items()}
    lrs = {k: [g["lr"] for g in o.param_groups] for k, o in optimizers.items()}
    try:
        model.load_state_dict(state["model"])
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        saved = {k: state.get("schedulers", {}).get(k, v) for k, v in fresh.items()}
        for name, scheduler in schedulers.items():
            scheduler.load_state_dict(saved[name])
    except (RuntimeError, KeyError, ValueError) as e:
        raise GenlabError(f"the checkpoint does not fit this model: {e}") from None
    step = int(state["step"])
    for name, optimizer in optimizers.items():
        role = update.names[name]
        for group, settings in zip(optimizer.param_groups, groups[name], strict=True):
            for key, value in settings.items():
                if group.get(key) != value:
                    old = group.get(key)
                    group[key] = value
                    shown = "lr" if key == "initial_lr" else key
                    log.info("%s %s: %s -> %s from step %d", role, shown, old, value, step)
        if _settings(saved[name]) != _settings(fresh[name]):
            _replay(schedulers[name], optimizer, fresh[name], lrs[name], step)
            changed = sorted(  # base_lrs follow the learning rate, logged above
                k
                for k in (saved[name].keys() | fresh[name].keys()) - _PROGRESS - {"base_lrs"}
                if _settings(saved[name].get(k)) != _settings(fresh[name].get(k))
            )
            if changed:
                old, new = saved[name], fresh[name]
                log.info(
                    "%s schedule changed (%s): learning rate %s at step %d",
                    role,
                    ", ".join(f"{k}: {old.get(k)} -> {new.get(k)}" for k in changed),
                    optimizer.param_groups[0]["lr"],
                    step,
                )
    update.load_state_dict(state.get("updater", {}))
    loader.load_state_dict(state["loader"])
    rngs = state.get("rng_ranks", [state["rng"]])
    if len(rngs) == procs.world:
        set_rng_state(rngs[procs.rank])
    else:  # saved by another number of processes: a fresh, distinct stream per process
        log.info("random states of %d process(es) reseeded for %d", len(rngs), procs.world)
        seed_everything(step * 1_000_003 + procs.rank)
    return step, int(state.get("skipped", 0))


def _settings(state: Any) -> Any:
    """An optimizer param group's or a scheduler's settings (those of a chained scheduler's
    parts too): what its config decides, without its progress."""
    if isinstance(state, dict):
        return {k: _settings(v) for k, v in state.items() if k not in {"params", "lr", *_PROGRESS}}
    if isinstance(state, list):
        return [_settings(v) for v in state]
    return state


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


class _StopRequests(list):
    """Catch SIGINT and SIGTERM during training: the signals received, which the loop acts on
    (it saves, then exits). A second signal stops at once (KeyboardInterrupt), and so does the
    first during `interruptible()` (StopRequested: an evaluation)."""

    def __init__(self) -> None:
        super().__init__()
        self._previous: dict[int, Any] = {}
        self._interruptible = False

    def _handler(self, signum: int, frame: Any) -> None:
        if self:
            raise KeyboardInterrupt
        self.append(signum)
        name = signal.Signals(signum).name
        if self._interruptible:
            raise StopRequested(name)
        log.warning("%s received: saving a checkpoint after this step", name)

    @contextmanager
    def interruptible(self):
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False

    def __enter__(self) -> _StopRequests:
        if threading.current_thread() is threading.main_thread():
            self._previous = {
                s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)
            }
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)


def _short(values: dict[str, float]) -> dict[str, str]:
    """Compact progress-bar / log form of the logged values."""
    skip = ("lr/", "epoch", "grad_norm", "eval/class_accuracy/", "amp/")
    keep = {k: v for k, v in values.items() if not k.startswith(skip)}
    return {k.removeprefix("loss/").removeprefix("perf/"): f"{v:.4g}" for k, v in keep.items()}
