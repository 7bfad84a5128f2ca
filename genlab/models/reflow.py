"""Reflow (Liu et al. 2023, "Flow straight and fast"): a trained flow model (the teacher,
`model.init_from`) carries noise to images along curved paths; a flow model trained on the
straight paths between that noise and the teacher's own images learns a straighter field, so that
a few Euler steps, or one, land where the teacher's many did.

`model=reflow` is the flow family with other training pairs. The student starts from the
teacher's sampling weights (its moving average). At its first training step it draws `pairs`
noise-image pairs from the teacher by `teacher` (an ODE solver and its NFE), from a stream of
their own (`pair_stream`: seeded by a hash of `pair_seed`, so that `genlab eval`, `genlab sample`
and the grids, whose seeds are small numbers, never draw the noise the student learnt; with
uniform labels for a class-conditional model), and keeps them in memory; each
step then takes a random batch of them (torch's generator, so a resume is exact: it draws the
same pairs again from the teacher). The data set's batches only keep the loader in step.
Without `init_from` the pairs come from the model's own starting weights, and a warning says so.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from genlab.data.loader import Batch
from genlab.errors import require_at_least
from genlab.models.flow import Flow, scaled
from genlab.models.flow_solvers import FlowSolver

log = logging.getLogger(__name__)


def pair_stream(pair_seed: int, device: torch.device) -> torch.Generator:
    """The generator of the pairs' noise and labels: seeded with 63 bits of a hash of `pair_seed`,
    so that it is no stream a sampling seed starts (evaluating at seed 0 a student trained on pairs
    from torch's seed 0 would measure it on its own training noise)."""
    digest = hashlib.sha256(f"genlab reflow pairs {pair_seed}".encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") >> 1)


class Reflow(Flow):
    """A flow model trained on `pairs` (noise, image) pairs of the teacher at `init_from`, drawn
    by the ODE solver `teacher` from `pair_stream(pair_seed)`, `pair_batch` at a time. The other
    keys are the flow family's."""

    def __init__(
        self,
        *args: Any,
        teacher: FlowSolver,
        pairs: int = 10_000,
        pair_seed: int = 0,
        pair_batch: int = 250,
        **kwargs: Any,
    ) -> None:
        require_at_least(1, pairs=pairs, pair_batch=pair_batch)
        self.__dict__.update(_teacher=None, _pairs=None)  # not the model's state: drawn anew
        self.teacher_solver, self.num_pairs, self.pair_seed = teacher, pairs, pair_seed
        self.pair_batch = pair_batch
        super().__init__(*args, **kwargs)
        if self.condition.kind == "image":
            raise ValueError("model=reflow draws its pairs from noise or class labels, not images")

    def finish(self, init_from: str | None, freeze: Any) -> None:
        """The teacher is the network the student starts as (from `init_from`, by its moving
        average: `starting_weights`), kept before a resume loads the student."""
        super().finish(init_from, freeze)
        teacher = copy.deepcopy(self.network).requires_grad_(False).eval()
        self.__dict__.update(_teacher=teacher, _taught=bool(init_from))

    def pair(self, batches: Iterator[Batch]) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """A random batch of the teacher's pairs (drawn at the first step)."""
        x0, _ = next(batches)
        if self._pairs is None:
            self.__dict__["_pairs"] = self.draw_pairs(x0.device)
        images, noise, labels = self._pairs
        i = torch.randint(len(images), (len(x0),), device=x0.device)
        return images[i], noise[i], None if labels is None else labels[i]

    @torch.no_grad()
    def draw_pairs(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor | None]:
        """`pairs` noise tensors from `pair_stream(pair_seed)`, the teacher's images of them (and
        the labels they were drawn with)."""
        teacher: nn.Module = self._teacher.to(device)
        if not self._taught:
            log.warning(
                "model.init_from is null: the pairs come from this model's untrained weights. "
                "Reflow trains on a trained flow model's own images: name its run folder or "
                "checkpoint as model.init_from=PATH"
            )
        gen = pair_stream(self.pair_seed, device)
        solver, out = self.teacher_solver, ([], [], [])
        what = f"Reflow: {self.num_pairs:,} pairs from the teacher ({solver.name}, {solver.cost()})"
        log.info("%s: drawing (at every start, resumes too) ...", what)
        began = time.perf_counter()
        # minutes before the first step: a bar on a terminal, and the time left in the log
        with tqdm(
            total=self.num_pairs, desc="reflow pairs", unit="pair", leave=False, disable=None
        ) as bar:
            for start in range(0, self.num_pairs, self.pair_batch):
                n = min(self.pair_batch, self.num_pairs - start)
                noise = self._noise(n, gen).to(device)
                labels = None
                if self.num_classes:
                    labels = torch.randint(self.num_classes, (n,), device=device, generator=gen)
                velocity = scaled(self.denoiser(labels, solver.guidance, teacher))
                images, _ = solver.solve(velocity, noise)
                for kept, x in zip(out, (images, noise, labels), strict=True):
                    kept.append(x)
                bar.update(n)
                if start == 0 and n < self.num_pairs:
                    left = (time.perf_counter() - began) * (self.num_pairs - n) / n
                    log.info("%s: about %.1f min left", what, left / 60)
        log.info("%s drawn in %.0f s", what, time.perf_counter() - began)
        self.__dict__["_teacher"] = None  # its work is done
        images, noise, labels = (torch.cat(x) if x[0] is not None else None for x in out)
        return images, noise, labels
