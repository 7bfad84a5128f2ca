"""What a training run shows while it runs: images per second, the values of a logging step in
short form (the bar's postfix), and the line a log file gets for each logging step."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

log = logging.getLogger(__name__)


class Speed:
    """Images per second over the steps since the last logging step."""

    def __init__(self, images_per_step: int, device: torch.device) -> None:
        self.images_per_step, self.device = images_per_step, device
        self.start, self.steps = time.perf_counter(), 0

    def images_per_s(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        rate = self.steps * self.images_per_step / (now - self.start)
        self.start, self.steps = now, 0
        return rate


# the units of values whose name does not say it, by the name's last part: likelihoods and their
# terms are means per image (evaluated: of the 8-bit values)
UNITS = dict.fromkeys(("neg_elbo", "nll", "nll_is", "nll_ode", "recon", "kl"), "nats/image")
UNITS["psnr"] = "dB"


def unit(name: str) -> str:
    """`bits/dim`, `nats/image`, `dB`, or "" for a value without a unit."""
    if name.endswith("bits_per_dim"):
        return "bits/dim"
    return UNITS.get(name.rpartition("/")[2], "")


def short(values: dict[str, float]) -> dict[str, str]:
    """Compact progress-bar / log form of the logged values, with the unit where the name does
    not say it (`recon 93.1 nats/image`, `bits_per_dim 2.1`)."""
    skip = ("lr/", "perf/epoch", "grad_norm", "eval/class_accuracy/", "amp/")
    keep = {k: v for k, v in values.items() if not k.startswith(skip)}
    return {
        k.partition("/")[2] if k.startswith(("loss/", "perf/", "gan/")) else k: " ".join(
            filter(None, (f"{v:.4g}", "" if k.endswith("bits_per_dim") else unit(k)))
        )
        for k, v in keep.items()
    }


def log_line(step: int, start: int, total: int, values: dict[str, float], seconds: float) -> str:
    """`step 500/1500: d 1.27, g 1.75, ..., images_per_s 2174; 35 s left`."""
    done = step - start
    left = seconds / done * (total - step) if done else 0.0
    shown = ", ".join(f"{k} {v}" for k, v in short(values).items())
    return f"step {step}/{total}: {shown}; {duration(left)} left"


def duration(seconds: float) -> str:
    """`35 s`, `12 min`, `2.5 h`."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    return f"{minutes:.0f} min" if minutes < 120 else f"{minutes / 60:.1f} h"


@contextmanager
def phase(what: str) -> Iterator[None]:
    """A phase of a long command (an evaluation's generation, features, likelihood): where the
    output is no terminal, so no bar shows it, a line says what took how long."""
    began = time.perf_counter()
    yield
    if not sys.stderr.isatty():
        log.info("%s in %.1f s", what, time.perf_counter() - began)
