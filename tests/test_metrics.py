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


def test_the_continuous_bernoulli_is_a_density():
    """Its normalizer makes lambda^y (1 - lambda)^(1 - y) integrate to one over [0, 1], at
    every logit (the series near 0 included)."""
    from genlab.losses import bernoulli_nll, continuous_bernoulli_log_norm

    y = (torch.arange(20000, dtype=torch.float64) + 0.5) / 20000  # midpoint rule
    for logit in (-30.0, -4.0, -1e-4, 0.0, 2e-4, 0.7, 12.0):
        logits = torch.full((1, len(y)), logit, dtype=torch.float64)
        log_p = -bernoulli_nll(logits.T, y[:, None]) + continuous_bernoulli_log_norm(logits).T[:, 0]
        assert log_p.exp().mean().item() == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_a_vae_that_ignores_its_input_has_the_bits_per_dim_of_its_decoder_by_hand(likelihood):
    """An encoder that outputs the prior (KL 0) and a decoder that outputs 0: the continuous
    Bernoulli at lambda 1/2 is uniform on [0, 1], so every 8-bit value gets 1/256: exactly 8
    bits per dimension; the Gaussian N(0, sigma^2) on dequantized values is by hand."""
    from genlab.losses import ELBO
    from genlab.models.vae import vae_metrics

    class Zero(nn.Module):
        def __init__(self, shape):
            super().__init__()
            self.shape = shape

        def forward(self, x):
            return torch.zeros(len(x), *self.shape)

    class Stub(nn.Module):
        def __init__(self):
            super().__init__()
            self.decoder = Zero((1, 12, 12))

        def encode(self, x):
            return torch.zeros(len(x), 2), torch.zeros(len(x), 2)

    images = torch.randint(0, 256, (6, 1, 12, 12)) / 127.5 - 1
    loss = ELBO(likelihood, sigma=0.5)
    m = vae_metrics(Stub(), loss, images, k=3, seed=0)
    if likelihood == "bernoulli":
        assert m["neg_elbo_bits_per_dim"] == pytest.approx(8.0, abs=1e-5)
        assert m["nll_is_bits_per_dim"] == pytest.approx(8.0, abs=1e-5)
        return
    from genlab.metrics.likelihood import dequantize

    x = dequantize(images, torch.Generator().manual_seed(0))  # the metric's first draw
    per_dim = 0.5 * (x / 0.5) ** 2 + math.log(0.5 * math.sqrt(2 * math.pi)) + math.log(128)
    by_hand = per_dim.flatten(1).sum(1).mean().item()
    assert m["neg_elbo"] == pytest.approx(by_hand, rel=1e-5)
    assert m["neg_elbo_bits_per_dim"] == pytest.approx(by_hand / (144 * math.log(2)), rel=1e-5)
