"""What a run does about NaN or infinite losses and gradients (`trainer.on_nan`).

Such an update never reaches the weights: fused optimizers skip it on the device, and the others
are refused on the host (`optim.Updater`). `NonFiniteGuard` counts them, collecting the device's
count at logging steps (a host sync), and either stops the run (`stop`) naming the steps and the
last good checkpoint, or logs them and goes on (`skip`), failing the run at its end if every
update of a network in the last logging window was skipped.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

import torch
from torch import Tensor, nn

from genlab.errors import GenlabError
from genlab.logger import NullLogger
from genlab.optim import NonFiniteError, Updater

log = logging.getLogger(__name__)


class NonFiniteGuard:
    def __init__(
        self,
        update: Updater,
        on_nan: str,
        start: int,
        skipped: int,
        logger: NullLogger,
        last_good: Callable[[], str],
    ) -> None:
        self.update, self.on_nan, self.skipped = update, on_nan, skipped
        self.logger, self.last_good = logger, last_good  # last_good: waits for pending writes
        self.since = self.window_start = start + 1
        self.window: Counter[str] = Counter()  # skipped updates per network in this window
        self.attempted = dict(update.attempted)
        self.dead: tuple[int, int, list[str]] | None = None  # the last window, if all skipped

    def _skip(self, step: int, counts: dict[str, int], what: str) -> None:
        self.window.update(counts)
        if self.on_nan == "stop":
            raise GenlabError(
                f"{what} (skipped: the weights are untouched). The run stops; "
                f"{self.last_good()}. Set trainer.on_nan=skip to skip such updates instead."
            )
        self.skipped += sum(counts.values())
        log.warning("%s; skipped (%d so far)", what, self.skipped)
        self.logger.log_scalars({"guard/skipped_updates": self.skipped}, step)

    def host_skip(self, step: int, error: NonFiniteError) -> None:
        """An update the host refused at `step`."""
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
            self._skip(step, counts, f"{_steps(first, step)}: {what}")
        if window_end:
            tried = {k: n - self.attempted.get(k, 0) for k, n in self.update.attempted.items()}
            dead = [k for k, n in tried.items() if n and self.window[k] >= n]
            self.dead = (self.window_start, step, dead) if dead else None
            self.window_start, self.window = step + 1, Counter()
            self.attempted = dict(self.update.attempted)

    def finish(self) -> None:
        """Fail a run whose last logging window skipped every update of a network."""
        if self.dead is not None:
            first, last, names = self.dead
            who = " and ".join(self.update.names[k] for k in names)
            raise GenlabError(
                f"every {who} update of {_steps(first, last)} was non-finite and skipped "
                f"(trainer.on_nan=skip): the run failed; {self.last_good()}, with the weights "
                "of the last finite update. Try a lower learning rate"
            )
        if self.skipped:
            log.warning("%d non-finite updates were skipped in this run", self.skipped)


class StepUndo:
    """What a step changes in a model besides its trained weights (BatchNorm statistics, EMA
    copies, other floating-point buffers), kept at the step's start so that a step whose update
    was skipped leaves it as it was (`trainer.on_nan=skip`). The optimizers keep their state
    themselves (`optim.Updater`). Integer counters (BatchNorm's batch count, the updates an EMA
    or a family counts) count the step like the run's step does."""

    def __init__(self, model: nn.Module, update: Updater) -> None:
        self.update = update
        self.tensors = [
            t
            for t in model.state_dict(keep_vars=True).values()
            if t.is_floating_point() and not (isinstance(t, nn.Parameter) and t.requires_grad)
        ]
        self.saved: list[Tensor] = []
        self.skipped_before: Tensor | None = None

    def keep(self) -> None:
        """At the start of a step."""
        self.saved = [t.detach().clone() for t in self.tensors]
        self.skipped_before = self._skipped()

    @torch.no_grad()
    def undo(self, always: bool = False) -> None:
        """At the end of a step: put the kept state back if an update of this step was skipped
        (on the device, without a host sync), or `always` (the host refused one)."""
        if not self.tensors:
            return
        if always:
            torch._foreach_copy_(self.tensors, self.saved)
            return
        skipped = self._skipped() > self.skipped_before
        for t, old in zip(self.tensors, self.saved, strict=True):
            t.copy_(torch.where(skipped, old, t))

    def _skipped(self) -> Tensor:
        return torch.stack(list(self.update.skipped.values())).sum()


def _steps(first: int, last: int) -> str:
    return f"step {last}" if first == last else f"steps {first}-{last}"
