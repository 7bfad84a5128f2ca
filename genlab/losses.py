"""Losses as pure functions on discriminator logits and decoder outputs.

The classes at the bottom are what the `loss` config group instantiates: they bundle the functions
of one objective with its few settings, and say which model family they fit (`AdversarialLoss`
for GANs, `ELBO` for VAEs, `DenoisingLoss` for diffusion, `ExactNLL` for PixelCNN,
`PixelLoss` for restoration).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.errors import require_at_least

# --- adversarial objectives: inputs are raw discriminator outputs (logits) -------------------


def bce_d_loss(real: Tensor, fake: Tensor) -> Tensor:
    """Standard GAN discriminator loss: -log D(x) - log(1 - D(G(z)))."""
    return F.binary_cross_entropy_with_logits(
        real, torch.ones_like(real)
    ) + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))


def bce_g_loss(fake: Tensor) -> Tensor:
    """Non-saturating generator loss: -log D(G(z))."""
    return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))


def hinge_d_loss(real: Tensor, fake: Tensor) -> Tensor:
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


def hinge_g_loss(fake: Tensor) -> Tensor:
    return -fake.mean()


def lsgan_d_loss(real: Tensor, fake: Tensor) -> Tensor:
    """Least-squares GAN (Mao et al.) with targets 1 for real and 0 for fake."""
    return 0.5 * ((real - 1.0) ** 2).mean() + 0.5 * (fake**2).mean()


def lsgan_g_loss(fake: Tensor) -> Tensor:
    return 0.5 * ((fake - 1.0) ** 2).mean()


def wasserstein_d_loss(real: Tensor, fake: Tensor) -> Tensor:
    return fake.mean() - real.mean()


def wasserstein_g_loss(fake: Tensor) -> Tensor:
    return -fake.mean()


def input_gradients(out: Tensor, inputs: Tensor, loss_scale: float = 1.0) -> Tensor:
    """The gradient of each output (one per image) with respect to its own input, in float32,
    kept in the graph so a penalty on it can be trained through.

    Under float16 autocast, pass the loss scale: the output is scaled before the gradient is
    taken (so small gradients do not underflow) and the gradient unscaled after, as in PyTorch's
    AMP recipe; d(mean)/d(out) = 1/n keeps a scaled gradient within float16's range (65504).
    """
    (grad,) = torch.autograd.grad(out.float().mean() * loss_scale, inputs, create_graph=True)
    return grad.float() * (len(out) / loss_scale)


def gradient_penalty(
    critic: nn.Module,
    real: Tensor,
    fake: Tensor,
    labels: Tensor | None = None,
    loss_scale: float = 1.0,
) -> Tensor:
    """WGAN-GP penalty E[(||grad D(x_hat)||_2 - 1)^2] on random interpolates (Gulrajani et al.);
    `loss_scale` as in `input_gradients`."""
    eps = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device)
    mixed = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    grad = input_gradients(critic(mixed, labels), mixed, loss_scale)
    return ((grad.flatten(1).norm(2, dim=1) - 1.0) ** 2).mean()


def squared_gradient_norm(out: Tensor, inputs: Tensor, loss_scale: float = 1.0) -> Tensor:
    """E[||grad_x D(x)||^2]: Mescheder et al.'s R1 on real images and R2 on generated ones,
    without their gamma / 2 (`out` = D(inputs), one output per image)."""
    return input_gradients(out, inputs, loss_scale).flatten(1).pow(2).sum(1).mean()


def lecam_penalty(real: Tensor, fake: Tensor, anchor_real: Tensor, anchor_fake: Tensor) -> Tensor:
    """LeCam regularization (Tseng et al. 2021), as in the authors' code:
    E[relu(D(x) - a_F)^2] + E[relu(a_R - D(G(z)))^2], where a_R and a_F are moving averages of
    D's outputs on real and generated images. It keeps D's outputs near the other side's
    average, which limits how far D can overfit a small data set."""
    return F.relu(real - anchor_fake).pow(2).mean() + F.relu(anchor_real - fake).pow(2).mean()


def top_k(fake_scores: Tensor, fraction: float) -> Tensor:
    """Top-k training (Sinha et al. 2020): the `fraction` of D's scores on generated images that
    are highest (the most realistic samples; at least one), for the generator's loss."""
    k = max(1, round(fraction * len(fake_scores)))
    return fake_scores if k >= len(fake_scores) else fake_scores.topk(k, dim=0).values


# --- VAE: per-image sums in nats ----------------------------------------------------------------


def bernoulli_nll(logits: Tensor, target: Tensor) -> Tensor:
    """-log p(x|z) per image for Bernoulli pixels, target in [0, 1]."""
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).sum(1)


def gaussian_nll(mean: Tensor, target: Tensor, sigma: float) -> Tensor:
    """-log N(x; mean, sigma^2) per image, summed over pixels."""
    per_pixel = 0.5 * ((target - mean) / sigma) ** 2 + math.log(sigma) + 0.5 * math.log(2 * math.pi)
    return per_pixel.flatten(1).sum(1)


def continuous_bernoulli_log_norm(logits: Tensor) -> Tensor:
    """log C(lambda) of the continuous Bernoulli (Loaiza-Ganem & Cunningham 2019), which makes
    lambda^y (1 - lambda)^(1 - y) a density on [0, 1]: C = logit / tanh(logit / 2) (2 at 0)."""
    small = logits.abs() < 1e-3
    safe = torch.where(small, torch.ones_like(logits), logits)
    return torch.where(small, 2 + logits**2 / 6, safe / torch.tanh(safe / 2)).log()


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per image: 0.5 * sum(mu^2 + var - logvar - 1) >= 0."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0).flatten(1).sum(1)


# --- diffusion: the denoising objective -------------------------------------------------------


def weighted_mse(out: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Mean over images of `weight` times the image's mean squared error."""
    return (weight * ((out - target) ** 2).flatten(1).mean(1)).mean()


# --- flow matching: the straight path of rectified flow (Liu et al. 2023) ------------------------


def straight_path(x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """x_t = (1 - t) x0 + t noise, for one time t in [0, 1] per image."""
    t = t.view(-1, *[1] * (x0.ndim - 1))
    return (1 - t) * x0 + t * noise


def path_velocity(x0: Tensor, noise: Tensor) -> Tensor:
    """d x_t / dt of the straight path: noise - x0, the same at every t."""
    return noise - x0


# --- autoregressive: discrete likelihoods of the 8-bit values, per image in nats ----------------

LEVELS = 256  # the values of an 8-bit sub-pixel


def to_levels(x: Tensor) -> Tensor:
    """Images in [-1, 1] as their 8-bit values 0..255 (the data's own, rounded)."""
    return ((x + 1) * (LEVELS - 1) / 2).round().clamp(0, LEVELS - 1).long()


def from_levels(levels: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """8-bit values 0..255 as images in [-1, 1] (`to_levels` inverted)."""
    return levels.to(dtype) * (2 / (LEVELS - 1)) - 1


def categorical_log_prob(logits: Tensor, levels: Tensor) -> Tensor:
    """log p of each sub-pixel's value under a softmax over its 256 values: `logits` (N, 256, *S),
    `levels` (N, *S) -> (N, *S)."""
    return -F.cross_entropy(logits, levels, reduction="none")


def logistic_mixture_log_prob(params: Tensor, levels: Tensor) -> Tensor:
    """log p of each sub-pixel's value under PixelCNN++'s discretized mixture of K logistics
    (Salimans et al. 2017): `params` (N, 3K, *S) are K mixture logits, K means (in [-1, 1]
    units) and K log-scales; `levels` (N, *S) -> (N, *S). Value v owns the bin of width 2/255
    around its grey level, the end values the tails. The bin mass s(a) - s(b) is computed as
    s(a) s(-b) (1 - e^(b - a)), exact and stable at any scale."""
    logit, mean, log_scale = params.chunk(3, dim=1)
    log_scale = log_scale.clamp(min=-7.0)  # PixelCNN++'s floor: bins stay resolvable
    x = from_levels(levels, params.dtype).unsqueeze(1)
    inv_scale, half = torch.exp(-log_scale), 1 / (LEVELS - 1)
    upper, lower = (x + half - mean) * inv_scale, (x - half - mean) * inv_scale
    log_upper, log_not_lower = F.logsigmoid(upper), F.logsigmoid(-lower)
    inner = log_upper + log_not_lower + torch.log(-torch.expm1(lower - upper))
    levels = levels.unsqueeze(1)
    log_bin = torch.where(
        levels == 0, log_upper, torch.where(levels == LEVELS - 1, log_not_lower, inner)
    )
    return torch.logsumexp(F.log_softmax(logit, dim=1) + log_bin, dim=1)


def image_nll(log_prob: Tensor) -> Tensor:
    """-log p(x) per image from its sub-pixels' log-probabilities (N, *S)."""
    return -log_prob.flatten(1).sum(1)


# --- what the `loss` config group builds -------------------------------------------------------


class AdversarialLoss:
    """A GAN objective: discriminator and generator losses on logits, the discriminator's
    regularizers and top-k training (`conf/gan_loss.yaml` says what each key means)."""

    gp_weight: float = 0.0  # weight of the gradient penalty (0: none)

    def __init__(
        self,
        n_critic: int = 1,
        r1: float = 0.0,
        r2: float = 0.0,
        reg_every: int = 1,
        lecam: float = 0.0,
        lecam_decay: float = 0.99,
        top_k_min: float = 1.0,
        top_k_decay: float = 0.99,
    ) -> None:
        require_at_least(0, r1=r1, r2=r2, lecam=lecam)
        require_at_least(1, n_critic=n_critic, reg_every=reg_every)
        if not 0 <= lecam_decay < 1:
            raise ValueError(f"lecam_decay must be in [0, 1), got {lecam_decay}")
        for name, value in (("top_k_min", top_k_min), ("top_k_decay", top_k_decay)):
            if not 0 < value <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {value}")
        self.n_critic = int(n_critic)  # discriminator updates per generator update
        self.r1, self.r2, self.reg_every = float(r1), float(r2), int(reg_every)
        self.lecam, self.lecam_decay = float(lecam), float(lecam_decay)
        self.top_k_min, self.top_k_decay = float(top_k_min), float(top_k_decay)

    def top_k_fraction(self, epoch: int) -> float:
        """The share of generated images the generator learns from in `epoch` (Sinha et al.:
        all at first, times `top_k_decay` each epoch, down to `top_k_min`)."""
        return max(self.top_k_min, self.top_k_decay**epoch)

    @property
    def input_gradients(self) -> bool:
        """Whether D is trained through gradients with respect to its inputs (GP, R1, R2)."""
        return bool(self.gp_weight or self.r1 or self.r2)

    def d_loss(self, real: Tensor, fake: Tensor) -> Tensor:
        raise NotImplementedError

    def g_loss(self, fake: Tensor) -> Tensor:
        raise NotImplementedError

    def score(self, logits: Tensor) -> Tensor:
        """What is logged as D(x) and D(G(z)): raw outputs unless a subclass says otherwise."""
        return logits


class NonSaturating(AdversarialLoss):
    """Goodfellow et al.'s GAN loss with the non-saturating generator objective."""

    d_loss = staticmethod(bce_d_loss)
    g_loss = staticmethod(bce_g_loss)

    def score(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(logits)


class Hinge(AdversarialLoss):
    d_loss = staticmethod(hinge_d_loss)
    g_loss = staticmethod(hinge_g_loss)


class LeastSquares(AdversarialLoss):
    d_loss = staticmethod(lsgan_d_loss)
    g_loss = staticmethod(lsgan_g_loss)


class WassersteinGP(AdversarialLoss):
    """Wasserstein loss with gradient penalty and several critic steps per generator step (the
    penalty is its regularizer: no R1, R2 or LeCam)."""

    d_loss = staticmethod(wasserstein_d_loss)
    g_loss = staticmethod(wasserstein_g_loss)

    def __init__(self, gp_weight: float = 10.0, n_critic: int = 5) -> None:
        super().__init__(n_critic)  # no R1, R2, LeCam or top-k: the gradient penalty regularizes
        require_at_least(0, gp_weight=gp_weight)
        self.gp_weight = float(gp_weight)


class ELBO:
    """The VAE's training objective: the reconstruction term -log p(x|z) plus `beta` times the KL
    term, each in nats per image.

    Images arrive in [-1, 1]. The Bernoulli likelihood models pixel intensities mapped to [0, 1]
    (not binarised: the data keep their grey levels, as in PyTorch's VAE example); the Gaussian
    likelihood has a fixed standard deviation `sigma` in [-1, 1] units. The Bernoulli's `recon` is
    no density of the grey levels, so the objective is not the evaluated bound: `genlab eval`'s
    `neg_elbo` (beta = 1, a normalized density of the 8-bit values) is what compares.
    """

    def __init__(
        self,
        likelihood: Literal["bernoulli", "gaussian"] = "bernoulli",
        beta: float = 1.0,
        sigma: float = 0.1,
    ) -> None:
        if likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"likelihood must be 'bernoulli' or 'gaussian', got {likelihood!r}")
        require_at_least(0, beta=beta)
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.likelihood, self.beta, self.sigma = likelihood, float(beta), float(sigma)

    def nll(self, decoded: Tensor, x: Tensor) -> Tensor:
        """-log p(x|z) per image for decoder outputs and images in [-1, 1]."""
        if self.likelihood == "bernoulli":
            return bernoulli_nll(decoded, (x + 1) / 2)
        return gaussian_nll(decoded, x, self.sigma)

    def density_nll(self, decoded: Tensor, x: Tensor) -> Tensor:
        """-log p(x|z) per image under a normalized density of x in [-1, 1]^D, for comparing
        likelihoods: the Gaussian as it is; the Bernoulli as the continuous Bernoulli on
        (x + 1) / 2 (its normalizer added), and the change of variables to [-1, 1] (D log 2)."""
        if self.likelihood == "gaussian":
            return gaussian_nll(decoded, x, self.sigma)
        per_pixel = continuous_bernoulli_log_norm(decoded) - math.log(2)
        return bernoulli_nll(decoded, (x + 1) / 2) - per_pixel.flatten(1).sum(1)

    def mean(self, decoded: Tensor) -> Tensor:
        """The mean image of p(x|z), in [-1, 1]."""
        if self.likelihood == "bernoulli":
            return torch.sigmoid(decoded) * 2 - 1
        return decoded.clamp(-1, 1)

    def __call__(self, decoded: Tensor, x: Tensor, mu: Tensor, logvar: Tensor) -> dict[str, Tensor]:
        """Batch means: `loss` (to minimise, beta-weighted), `recon` and `kl`."""
        recon, kl = self.nll(decoded, x).mean(), gaussian_kl(mu, logvar).mean()
        return {"loss": recon + self.beta * kl, "recon": recon, "kl": kl}


class DenoisingLoss:
    """The diffusion family's objective: the squared error of the network's prediction target,
    weighted per image by its timestep. `weighting`: `uniform` (Ho et al.'s simple loss) or
    `min_snr` (Hang et al. 2023: the x_0 error weighted by min(SNR, `gamma`), which stops the
    low-noise steps from dominating)."""

    def __init__(
        self, weighting: Literal["uniform", "min_snr"] = "uniform", gamma: float = 5.0
    ) -> None:
        if weighting not in ("uniform", "min_snr"):
            raise ValueError(f"weighting must be 'uniform' or 'min_snr', got {weighting!r}")
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        self.weighting, self.gamma = weighting, float(gamma)

    __call__ = staticmethod(weighted_mse)


class FlowMatchingLoss:
    """The flow family's objective (conditional flow matching, Lipman et al. 2023): a distance
    of the network's velocity from the straight path's, at times drawn `uniform` in [0, 1],
    `logit_normal` (Esser et al. 2024: sigmoid of a normal of `mean` and `std`, which puts more
    of them mid-path, where the velocity is hardest to guess) or `u_shaped` (Lee et al. 2024,
    for reflow: density proportional to cosh(`a` (t - 1/2)), more of them near the ends, where
    one- and two-step samplers evaluate the network).

    The distance is `mse` (the mean squared error) or `pseudo_huber` (Lee et al. 2024, after
    Song and Dhariwal 2023): per image, sqrt(|v - u|^2 + c^2) - c over its D dimensions with
    c = `huber_c` D, averaged; it grows as |v - u| far from the target, so the few pairs the
    field cannot fit pull on it less than under the square."""

    def __init__(
        self,
        times: Literal["uniform", "logit_normal", "u_shaped"] = "uniform",
        mean: float = 0.0,
        std: float = 1.0,
        a: float = 4.0,
        distance: Literal["mse", "pseudo_huber"] = "mse",
        huber_c: float = 0.00054,
    ) -> None:
        if times not in ("uniform", "logit_normal", "u_shaped"):
            raise ValueError(
                f"times must be 'uniform', 'logit_normal' or 'u_shaped', got {times!r}"
            )
        if distance not in ("mse", "pseudo_huber"):
            raise ValueError(f"distance must be 'mse' or 'pseudo_huber', got {distance!r}")
        for key, value in (("std", std), ("a", a), ("huber_c", huber_c)):
            if not value > 0:
                raise ValueError(f"{key} must be > 0, got {value}")
        self.times, self.mean, self.std, self.a = times, float(mean), float(std), float(a)
        self.distance, self.huber_c = distance, float(huber_c)

    def draw(self, n: int, device: torch.device) -> Tensor:
        """`n` training times in [0, 1], from torch's global generator."""
        if self.times == "logit_normal":
            return torch.sigmoid(self.mean + self.std * torch.randn(n, device=device))
        u = torch.rand(n, device=device)
        if self.times == "uniform":
            return u
        # the inverse of the U-shaped law's distribution function,
        # F(t) = (sinh(a (t - 1/2)) + sinh(a / 2)) / (2 sinh(a / 2))
        half = math.sinh(self.a / 2)
        return (0.5 + torch.asinh((2 * u - 1) * half) / self.a).clamp(0.0, 1.0)

    def __call__(self, velocity: Tensor, target: Tensor) -> Tensor:
        if self.distance == "mse":
            return F.mse_loss(velocity, target)
        dims = velocity[0].numel()
        c = self.huber_c * dims
        squared = (velocity - target).flatten(1).pow(2).sum(1)
        return ((squared + c**2).sqrt() - c).mean() / dims


class ExactNLL:
    """The autoregressive family's objective: the exact negative log-likelihood of the 8-bit
    images, in nats per image, averaged over the batch. What a sub-pixel's distribution is
    (a softmax over 256 values or a logistic mixture) is the model's `likelihood`."""

    @staticmethod
    def __call__(nll: Tensor) -> Tensor:
        return nll.mean()


class PixelLoss:
    """The restoration family's objective: the mean squared error (`mse`, SRCNN's and ESPCN's,
    which PSNR measures) or mean absolute error (`l1`, EDSR's: sharper edges) of the output's
    pixels against the target's, in [-1, 1]."""

    def __init__(self, kind: Literal["mse", "l1"] = "mse") -> None:
        if kind not in ("mse", "l1"):
            raise ValueError(f"kind must be 'mse' or 'l1', got {kind!r}")
        self.kind = kind

    def __call__(self, output: Tensor, target: Tensor) -> Tensor:
        return (F.mse_loss if self.kind == "mse" else F.l1_loss)(output, target)
