"""The generic training loop: steps, intervals, progress, sample grids and checkpoints.

It knows nothing of model families: each family (GAN, VAE) provides `train_step`,
`batches_per_step`, `fixed_inputs` and `sample_grids`.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from genlab.checkpoint import copy_checkpoint, save_checkpoint
from genlab.data import DeviceLoader
from genlab.data.loader import normalize
from genlab.images import save_png
from genlab.logger import NullLogger

log = logging.getLogger(__name__)


class Trainer:
    """Training settings (the `trainer` config group) and the loop that applies them.

    A step is one generator update (and the `n_critic` discriminator updates before it), or one
    VAE update. Training stops at `max_steps` or `max_epochs`, whichever comes first. Intervals of
    0 mean "only at the end".
    """

    def __init__(
        self,
        max_steps: int | None = 2000,
        max_epochs: int | None = None,
        batch_size: int = 64,
        log_every: int = 50,
        sample_every: int = 500,
        ckpt_every: int = 1000,
        num_samples: int = 64,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        checks = {
            "max_steps": (max_steps, 1),
            "max_epochs": (max_epochs, 1),
            "batch_size": (batch_size, 1),
            "log_every": (log_every, 1),
            "sample_every": (sample_every, 0),
            "ckpt_every": (ckpt_every, 0),
            "num_samples": (num_samples, 1),
            "seed": (seed, 0),
        }
        for name, (value, low) in checks.items():
            if value is not None and value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if max_steps is None and max_epochs is None:
            raise ValueError("set max_steps or max_epochs (both are null)")
        self.max_steps, self.max_epochs = max_steps, max_epochs
        self.batch_size, self.seed, self.num_samples = batch_size, seed, num_samples
        self.log_every, self.sample_every, self.ckpt_every = log_every, sample_every, ckpt_every
        self.progress = progress

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
        loader: DeviceLoader,
        *,
        device: torch.device,
        run_dir: Path,
        logger: NullLogger,
        extra_state: dict[str, Any] | None = None,
    ) -> dict[str, float]:
        """Train, writing grids to `samples/` and checkpoints to `checkpoints/`; return the last
        logged values."""
        model.to(device).train()
        spread = torch.linspace(0, len(loader.images) - 1, self.num_samples).long()  # all classes
        examples = (normalize(loader.images[spread.to(device)]), None)
        fixed = model.fixed_inputs(self.num_samples, examples, seed=self.seed)
        per_step = model.batches_per_step(loss)
        total = self.total_steps(loader.batches_per_epoch, per_step)
        images_per_step = loader.batch_size * per_step
        log.info("%d steps of %d images", total, images_per_step)
        values: dict[str, float] = {}
        bar = tqdm(total=total, disable=not self.progress, unit="step", dynamic_ncols=True)
        window_start, window_steps = time.perf_counter(), 0
        for step in range(1, total + 1):
            metrics = model.train_step(loader, loss, optimizers)
            window_steps += 1
            last = step == total
            if step % self.log_every == 0 or last:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                now = time.perf_counter()
                values = {k: float(v) for k, v in metrics.items()}
                values["perf/images_per_s"] = window_steps * images_per_step / (now - window_start)
                values["epoch"] = loader.epoch + loader.index / loader.batches_per_epoch
                values.update({f"lr/{k}": o.param_groups[0]["lr"] for k, o in optimizers.items()})
                logger.log_scalars(values, step)
                bar.set_postfix(_short(values), refresh=False)
                window_start, window_steps = now, 0
            if (self.sample_every and step % self.sample_every == 0) or last:
                for name, grid in model.sample_grids(fixed, loss).items():
                    save_png(grid, run_dir / "samples" / f"{name}_{step:07d}.png")
                    logger.log_image(name, grid, step)
            if (self.ckpt_every and step % self.ckpt_every == 0) or last:
                state = {
                    "step": step,
                    "model": model.state_dict(),
                    "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                    "loader": loader.state_dict(),
                    **(extra_state or {}),
                }
                path = run_dir / "checkpoints" / f"step_{step:07d}.pt"
                save_checkpoint(state, path)
                copy_checkpoint(path, run_dir / "checkpoints" / "last.pt")
            bar.update(1)
        bar.close()
        logger.close()
        log.info("Finished %d steps: %s", total, _short(values))
        return values


def _short(values: dict[str, float]) -> dict[str, str]:
    """Compact progress-bar / log form of the logged values."""
    keep = {k: v for k, v in values.items() if not k.startswith(("lr/", "epoch"))}
    return {k.removeprefix("loss/").removeprefix("perf/"): f"{v:.4g}" for k, v in keep.items()}
