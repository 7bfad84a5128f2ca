"""Distances between sets of image features, as pure functions (float64 where it matters).

- Fréchet distance (FID's formula) between Gaussians fitted to two feature sets.
- Kernel distance (KID): the unbiased MMD^2 with the cubic polynomial kernel, averaged over
  random subsets.
- Improved precision and recall (Kynkäänniemi et al., 2019) from k-nearest-neighbour balls.
- Density and coverage (Naeem et al., 2020) from the real samples' k-NN balls only.
- Intra-class Fréchet distance: the Fréchet distance within each class, averaged.
"""

from __future__ import annotations

import torch
from torch import Tensor


def feature_stats(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and (unbiased) covariance of (N, D) features, in float64."""
    f = features.double()
    if len(f) < 2:
        raise ValueError(f"need at least 2 feature vectors, got {len(f)}")
    mu = f.mean(0)
    centred = f - mu
    return mu, centred.T @ centred / (len(f) - 1)


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), in float64.

    The trace of the matrix square root is the sum of the square roots of the eigenvalues of
    S1 S2 (real and non-negative for covariance matrices, up to rounding).
    """
    mu1, sigma1, mu2, sigma2 = (t.double() for t in (mu1, sigma1, mu2, sigma2))
    mean_term = (mu1 - mu2).square().sum()
    root_trace = torch.linalg.eigvals(sigma1 @ sigma2).sqrt().real.sum()
    return float(mean_term + sigma1.trace() + sigma2.trace() - 2 * root_trace)


def _mmd2_polynomial(x: Tensor, y: Tensor) -> Tensor:
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3."""
    d, m = x.shape[1], len(x)
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    off = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return off - 2 * kxy.mean()


def kernel_distance(
    real: Tensor, fake: Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID: mean and standard deviation over `subsets` random subsets of `subset_size` (capped
    at the smaller set) of the unbiased polynomial-kernel MMD^2, in float64."""
    real, fake = real.double(), fake.double()
    m = min(subset_size, len(real), len(fake))
    if m < 2:
        raise ValueError(f"need at least 2 feature vectors per set, got {len(real)}, {len(fake)}")
    gen = torch.Generator().manual_seed(seed)
    values = torch.stack(
        [
            _mmd2_polynomial(
                real[torch.randperm(len(real), generator=gen)[:m]],
                fake[torch.randperm(len(fake), generator=gen)[:m]],
            )
            for _ in range(subsets)
        ]
    )
    return float(values.mean()), float(values.std(unbiased=False))


def _knn_radii(features: Tensor, k: int, chunk: int) -> Tensor:
    """Distance from each point to its k-th nearest neighbour in the same set (not itself)."""
    radii = [
        torch.cdist(block, features).kthvalue(k + 1, dim=1).values
        for block in features.split(chunk)
    ]
    return torch.cat(radii)


def _covered(points: Tensor, centres: Tensor, radii: Tensor, chunk: int) -> Tensor:
    """Whether each point lies in at least one ball (centre, radius)."""
    return torch.cat(
        [(torch.cdist(block, centres) <= radii).any(dim=1) for block in points.split(chunk)]
    )


def precision_recall(
    real: Tensor, fake: Tensor, k: int = 3, chunk: int = 1024
) -> tuple[float, float]:
    """Precision: the share of generated samples inside the real manifold (the union of each real
    sample's k-NN ball); recall: the share of real samples inside the generated manifold."""
    real, fake = real.double(), fake.double()
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set")
    precision = _covered(fake, real, _knn_radii(real, k, chunk), chunk).double().mean()
    recall = _covered(real, fake, _knn_radii(fake, k, chunk), chunk).double().mean()
    return float(precision), float(recall)


def density_coverage(
    real: Tensor, fake: Tensor, k: int = 5, chunk: int = 1024
) -> tuple[float, float]:
    """Density: how many real k-NN balls hold each generated sample, over k (about 1 for any
    sample inside the data's support, 0 outside; above 1 for samples crowding real ones).
    Coverage: the share of real balls holding at least one generated sample (falls when modes
    are dropped; about 1 - 2^-k for two equal-sized samples of one distribution). Only real
    balls are used, so outlying generated samples cannot inflate either."""
    real, fake = real.double(), fake.double()
    if len(real) <= k or not len(fake):
        raise ValueError(f"density/coverage with k={k} needs more than {k} real samples")
    radii = _knn_radii(real, k, chunk)
    counts = torch.zeros(len(real), dtype=torch.long)  # generated samples inside each real ball
    inside = 0
    for block in fake.split(chunk):
        hits = torch.cdist(block, real) <= radii
        inside += int(hits.sum())
        counts += hits.sum(dim=0)
    return inside / (k * len(fake)), float((counts > 0).double().mean())


def intra_class_fd(
    real: Tensor, real_labels: Tensor, fake: Tensor, fake_labels: Tensor, num_classes: int
) -> dict[int, float]:
    """The Fréchet distance between the generated and the real features of each class (classes
    with fewer than 2 of either are left out): a conditional model that draws the right
    variety for every class scores low on all of them."""
    out = {}
    for c in range(num_classes):
        r, f = real[real_labels == c], fake[fake_labels == c]
        if min(len(r), len(f)) >= 2:
            out[c] = frechet_distance(*feature_stats(f), *feature_stats(r))
    return out
