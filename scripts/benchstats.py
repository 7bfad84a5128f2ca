"""The statistics of scripts/benchmark.py: alternating rounds, median and interquartile range,
and the noise floor a ratio must clear before it counts.

Each round measures every variant once, in an order rotated from round to round, so drifts in
machine speed and position effects hit every variant alike. Ratios are taken within a round
(genlab / bare of the same round), and the bare loop is measured twice per round: bare / bare is
what the machine's noise alone makes of a ratio. Its distance from 1 plus half its interquartile
range is the noise floor; genlab's overhead counts only where its median ratio differs from 1 by
more than that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Spread:
    """Median and quartiles of some measurements."""

    median: float
    q1: float
    q3: float
    n: int

    @property
    def half_iqr(self) -> float:
        return (self.q3 - self.q1) / 2

    def cell(self, spec: str = ".3f", scale: float = 1.0, unit: str = "") -> str:
        """A table cell "median[unit] [q1, q3]", each value times `scale` in format `spec`."""
        q1, median, q3 = (format(scale * v, spec) for v in (self.q1, self.median, self.q3))
        return f"{median}{unit} [{q1}, {q3}]"


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile by linear interpolation between order statistics (numpy's default)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (pos - low) * (ordered[high] - ordered[low])


def spread(values: Sequence[float]) -> Spread:
    return Spread(
        quantile(values, 0.5), quantile(values, 0.25), quantile(values, 0.75), len(values)
    )


def ratios(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    """Per-round ratios of two variants measured in the same rounds."""
    if len(numerator) != len(denominator):
        raise ValueError(f"rounds differ: {len(numerator)} and {len(denominator)}")
    return [a / b for a, b in zip(numerator, denominator, strict=True)]


def noise_floor(bare: Sequence[float], bare_again: Sequence[float]) -> float:
    """How far from 1 a ratio can fall by noise alone: |median(bare' / bare) - 1| plus half the
    interquartile range of bare' / bare."""
    s = spread(ratios(bare_again, bare))
    return abs(s.median - 1) + s.half_iqr


def verdict(ratio: Spread, floor: float) -> str:
    """What a median ratio says once the noise floor is taken into account."""
    change = ratio.median - 1
    if abs(change) <= floor:
        return "within noise"
    return f"{100 * abs(change):.1f}% {'slower' if change > 0 else 'faster'}"


def settled(values: Sequence[float], tolerance: float, min_rounds: int) -> bool:
    """Whether enough rounds have run: at least `min_rounds`, and half the interquartile range of
    the per-round ratios at most `tolerance`."""
    return len(values) >= min_rounds and spread(values).half_iqr <= tolerance


def round_order(variants: Sequence[str], round_index: int) -> list[str]:
    """The variants rotated by the round number: over len(variants) rounds each variant runs
    once in each position."""
    k = round_index % len(variants)
    return [*variants[k:], *variants[:k]]
