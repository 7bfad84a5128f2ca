"""Feature distances against hand-computed values and torchmetrics; the data-set classifier."""

import math

import pytest
import torch
from torch import nn

from genlab.metrics.distances import (
    density_coverage,
    feature_stats,
    frechet_distance,
    kernel_distance,
    precision_recall,
)


def test_frechet_distance_of_known_gaussians():
    # 1-D: (0 - 1)^2 + 1 + 4 - 2 * sqrt(1 * 4) = 2
    assert frechet_distance(
        torch.tensor([0.0]), torch.tensor([[1.0]]), torch.tensor([1.0]), torch.tensor([[4.0]])
    ) == pytest.approx(2.0)
    # diagonal: sum (m1 - m2)^2 + sum (sqrt(v1) - sqrt(v2))^2 = (1 + 4) + (1 + 0.25)
    mu1, mu2 = torch.tensor([0.0, 0.0]), torch.tensor([1.0, 2.0])
    s1, s2 = torch.diag(torch.tensor([1.0, 2.25])), torch.diag(torch.tensor([4.0, 1.0]))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(6.25)


def test_frechet_distance_of_samples_is_zero_for_identical_and_grows_with_shift():
    torch.manual_seed(0)
    x = torch.randn(2000, 6)
    same = frechet_distance(*feature_stats(x), *feature_stats(x.clone()))
    assert abs(same) < 1e-8
    shifts = [frechet_distance(*feature_stats(x), *feature_stats(x + s)) for s in (0.5, 1.0)]
    assert shifts[0] == pytest.approx(6 * 0.25, rel=1e-6)  # only the mean term moves
    assert shifts[1] == pytest.approx(6 * 1.0, rel=1e-6)


class Flatten(nn.Module):
    num_features = 8

    def forward(self, x):
        return x.flatten(1).float()


def test_distances_agree_with_torchmetrics():
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    torch.manual_seed(0)
    a, b = torch.randn(500, 1, 2, 4), torch.randn(400, 1, 2, 4) * 1.5 + 0.3
    fid = FrechetInceptionDistance(feature=Flatten())
    fid.update(a, real=True)
    fid.update(b, real=False)
    ours = frechet_distance(*feature_stats(a.flatten(1)), *feature_stats(b.flatten(1)))
    assert ours == pytest.approx(float(fid.compute()), rel=1e-5)
    with pytest.warns(UserWarning):
        kid = KernelInceptionDistance(feature=Flatten(), subsets=1, subset_size=400)
    kid.update(a[:400], real=True)
    kid.update(b, real=False)
    mean, _ = kernel_distance(a[:400].flatten(1), b.flatten(1), subsets=1, subset_size=400)
    assert mean == pytest.approx(float(kid.compute()[0]), rel=1e-5)


def test_kernel_distance_near_zero_for_the_same_distribution():
    torch.manual_seed(0)
    x, y = torch.randn(600, 4), torch.randn(600, 4)
    same, _ = kernel_distance(x, y, subsets=20, subset_size=300)
    shifted, _ = kernel_distance(x, y + 1.0, subsets=20, subset_size=300)
    assert abs(same) < 0.05 and shifted > 1.0


def test_precision_recall_on_sets_with_known_overlap():
    torch.manual_seed(0)
    real = torch.randn(1000, 2)
    assert precision_recall(real, torch.randn(1000, 2), k=3) > (0.9, 0.9)
    # a generator collapsed to one corner of the data: precise, but covers little
    collapsed = real[real[:, 0] > 1.0][:100] + 0.01
    p, r = precision_recall(real, collapsed, k=3)
    assert p > 0.9 and r < 0.3
    # a generator off the data: neither
    p, r = precision_recall(real, torch.randn(1000, 2) + 10.0, k=3)
    assert p == 0.0 and r == 0.0
    assert math.isfinite(p)


def test_density_coverage_by_hand_and_on_known_sets():
    # by hand, k=1 on a line: real 0, 1, 3 have 1-NN radii 1, 1, 2
    real = torch.tensor([[0.0], [1.0], [3.0]])
    fake = torch.tensor([[0.5], [2.5], [10.0]])
    # 0.5 lies in the balls of 0 and 1; 2.5 in the ball of 3 only; 10 in none: 3 hits / (1 * 3)
    # samples; balls holding a sample: all three
    assert density_coverage(real, fake, k=1) == pytest.approx((1.0, 1.0))
    assert density_coverage(real, fake[1:], k=1) == pytest.approx((0.5, 1 / 3))
    torch.manual_seed(0)
    real = torch.randn(2000, 8)
    density, coverage = density_coverage(real, torch.randn(2000, 8), k=5)
    assert density == pytest.approx(1.0, abs=0.1) and coverage == pytest.approx(1 - 2**-5, abs=0.03)
    density, coverage = density_coverage(real, torch.randn(2000, 8) + 20.0, k=5)
    assert density == 0.0 and coverage == 0.0
    # half the data dropped (a fresh sample folded onto x < 0, in 2-D where the balls are small):
    # about half the balls covered; the samples still follow the data where they are: density 1
    real, fake = torch.randn(4000, 2), torch.randn(4000, 2)
    fake[:, 0] = -fake[:, 0].abs()
    density, coverage = density_coverage(real, fake, k=5)
    assert coverage == pytest.approx(0.5, abs=0.05) and density == pytest.approx(1.0, abs=0.1)
    # collapsed onto the mode: each sample still lies in about k real balls, few balls covered
    density, coverage = density_coverage(real, 0.2 * torch.randn(4000, 2), k=5)
    assert density == pytest.approx(1.0, abs=0.15) and coverage < 0.3
