"""The arithmetic of Gaussian diffusion (Ho et al. 2020) as pure functions of a noise schedule's
cumulative products `alpha_bar`: noising, the three prediction targets and their conversions, the
signal-to-noise ratio, and the terms of the variational bound in nats.

Timesteps are 0-based, as in diffusers: `x_t = sqrt(alpha_bar[t]) x_0 + sqrt(1 - alpha_bar[t])
eps` for t in 0..T-1, and the bound's term at t = 0 is the discretized decoder (Ho et al. 3.3).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

Prediction = Literal["eps", "v", "x0"]  # what the network predicts
# diffusers' name for each (`prediction_type` of its schedulers and pipelines)
DIFFUSERS_PREDICTION = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}


def _bcast(values: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """`values[t]` shaped to broadcast over images like `like`."""
    return values[t].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def snr(alpha_bar: Tensor) -> Tensor:
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) of each timestep."""
    return alpha_bar / (1 - alpha_bar)


def add_noise(x0: Tensor, eps: Tensor, t: Tensor, alpha_bar: Tensor) -> Tensor:
    """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps."""
    a = _bcast(alpha_bar, t, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


def target(prediction: Prediction, x0: Tensor, eps: Tensor, t: Tensor, alpha_bar: Tensor) -> Tensor:
    """What a network trained for `prediction` should output at x_t: eps, x_0 or
    v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0 (Salimans & Ho 2022)."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    a = _bcast(alpha_bar, t, x0)
    return a.sqrt() * eps - (1 - a).sqrt() * x0


def to_x0(prediction: Prediction, out: Tensor, x_t: Tensor, t: Tensor, alpha_bar: Tensor) -> Tensor:
    """The x_0 that a network output for `prediction` stands for, at x_t."""
    a = _bcast(alpha_bar, t, x_t)
    if prediction == "eps":
        return (x_t - (1 - a).sqrt() * out) / a.sqrt()
    if prediction == "v":
        return a.sqrt() * x_t - (1 - a).sqrt() * out
    return out


def to_eps(
    prediction: Prediction, out: Tensor, x_t: Tensor, t: Tensor, alpha_bar: Tensor
) -> Tensor:
    """The noise that a network output for `prediction` stands for, at x_t."""
    a = _bcast(alpha_bar, t, x_t)
    if prediction == "eps":
        return out
    if prediction == "v":
        return (1 - a).sqrt() * x_t + a.sqrt() * out
    return (x_t - a.sqrt() * out) / (1 - a).sqrt()


def loss_weight(
    prediction: Prediction, snr_t: Tensor, weighting: Literal["uniform", "min_snr"], gamma: float
) -> Tensor:
    """Per-image weight of the squared error on the `prediction` target. `uniform`: 1 (Ho et
    al.'s simple loss). `min_snr`: min(SNR, gamma) as a weight on the x_0 error (Hang et al. 2023),
    expressed for the target the network predicts: / SNR for eps, / (SNR + 1) for v."""
    if weighting == "uniform":
        return torch.ones_like(snr_t)
    clipped = snr_t.clamp(max=gamma)
    if prediction == "eps":
        return clipped / snr_t
    if prediction == "v":
        return clipped / (snr_t + 1)
    return clipped


# --- the variational bound (nats) --------------------------------------------------------------


def posterior(x0: Tensor, x_t: Tensor, t: Tensor, alpha_bar: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance of q(x_{t-1} | x_t, x_0), for t >= 1 (Ho et al. eq. 6-7)."""
    a, a_prev = _bcast(alpha_bar, t, x0), _bcast(alpha_bar, t - 1, x0)
    beta = 1 - a / a_prev
    mean = (beta * a_prev.sqrt() * x0 + (1 - a_prev) * (1 - beta).sqrt() * x_t) / (1 - a)
    return mean, beta * (1 - a_prev) / (1 - a)


def reverse_log_variance(t: Tensor, alpha_bar: Tensor, like: Tensor) -> Tensor:
    """log of p(x_{t-1} | x_t)'s fixed variance: the posterior's (diffusers' `fixed_small`),
    which is 0 at t = 0 and so takes t = 1's there (as in Nichol & Dhariwal's code)."""
    prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
    var = (1 - alpha_bar / prev) * (1 - prev) / (1 - alpha_bar)
    var = torch.cat([var[1:2], var[1:]])
    return _bcast(var.log(), t, like)


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise."""
    return 0.5 * (
        logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 / logvar2.exp() - 1
    )


def discretized_gaussian_nll(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """-log P(x) elementwise for 8-bit values x in [-1, 1] (bins of width 2/255) under a Gaussian
    whose outermost bins extend to infinity (Ho et al. eq. 13)."""
    centred = x - mean
    inv = torch.exp(-log_scale)
    cdf_plus = _std_cdf(inv * (centred + 1 / 255))
    cdf_minus = _std_cdf(inv * (centred - 1 / 255))
    log_cdf_plus = cdf_plus.clamp(min=1e-12).log()
    log_one_minus_cdf_minus = (1 - cdf_minus).clamp(min=1e-12).log()
    log_mass = (cdf_plus - cdf_minus).clamp(min=1e-12).log()
    log_p = torch.where(
        x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_minus, log_mass)
    )
    return -log_p


def _std_cdf(x: Tensor) -> Tensor:
    return 0.5 * (1 + torch.erf(x / math.sqrt(2)))


def prior_kl(x0: Tensor, alpha_bar: Tensor) -> Tensor:
    """KL(q(x_T | x_0) || N(0, I)) per image: the bound's term that no network changes."""
    a = alpha_bar[-1].to(x0.dtype)
    kl = normal_kl(
        a.sqrt() * x0, (1 - a).log().expand_as(x0), torch.zeros_like(x0), x0.new_zeros(())
    )
    return kl.flatten(1).sum(1)


def bound_term(x0: Tensor, x_t: Tensor, x0_pred: Tensor, t: Tensor, alpha_bar: Tensor) -> Tensor:
    """The bound's term at timestep t per image, in nats: the decoder's -log p(x_0 | x_1) at
    t = 0, else KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)), with p's mean the posterior mean
    at the predicted x_0."""
    logvar = reverse_log_variance(t, alpha_bar, x0)
    safe = t.clamp(min=1)
    true_mean, true_var = posterior(x0, x_t, safe, alpha_bar)
    model_mean, _ = posterior(x0_pred, x_t, safe, alpha_bar)
    kl = normal_kl(true_mean, true_var.log().expand_as(x0), model_mean, logvar).flatten(1).sum(1)
    # at t = 0 the model's mean is its x_0 (the posterior's at t = 0 is x_0 itself)
    decoder = discretized_gaussian_nll(x0, x0_pred, 0.5 * logvar).flatten(1).sum(1)
    return torch.where(t == 0, decoder, kl)
