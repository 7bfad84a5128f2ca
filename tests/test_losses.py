"""Each loss against values computed by hand on small tensors."""

import math

import pytest
import torch
from torch import nn

from genlab import losses

t = torch.tensor


def close(value, expected):
    assert float(value) == pytest.approx(expected, abs=1e-5)


def test_bce_losses():
    # -log sigmoid(2) - log(1 - sigmoid(-1)) = softplus(-2) + softplus(-1)
    close(losses.bce_d_loss(t([2.0]), t([-1.0])), 0.126928 + 0.313262)
    close(losses.bce_d_loss(t([0.0, 0.0]), t([0.0])), 2 * math.log(2))
    close(losses.bce_g_loss(t([0.0])), math.log(2))
    close(losses.bce_g_loss(t([1.0])), 0.313262)  # -log sigmoid(1)


def test_hinge_losses():
    # relu(1 - [0.5, 2]) = [0.5, 0] -> 0.25 ; relu(1 + [-0.5, 1]) = [0.5, 2] -> 1.25
    close(losses.hinge_d_loss(t([0.5, 2.0]), t([-0.5, 1.0])), 1.5)
    close(losses.hinge_g_loss(t([1.0, 3.0])), -2.0)


def test_least_squares_losses():
    # 0.5 * mean([0, 1]) + 0.5 * mean([0, 1]) = 0.5
    close(losses.lsgan_d_loss(t([1.0, 0.0]), t([0.0, 1.0])), 0.5)
    close(losses.lsgan_g_loss(t([0.0, 1.0])), 0.25)


def test_wasserstein_losses():
    close(losses.wasserstein_d_loss(t([1.0, 3.0]), t([0.0, 2.0])), 1.0 - 2.0)
    close(losses.wasserstein_g_loss(t([0.0, 2.0])), -1.0)


class Linear(nn.Module):
    """D(x) = sum(w * x): its input gradient is w everywhere, so the penalty is (|w| - 1)^2."""

    def __init__(self, w: float) -> None:
        super().__init__()
        self.w = w

    def forward(self, x, labels=None):
        return (self.w * x).flatten(1).sum(1)


@pytest.mark.parametrize(("w", "expected"), [(0.5, 0.0), (1.0, 1.0), (0.25, 0.25)])
def test_gradient_penalty_of_a_linear_critic(w, expected):
    real, fake = torch.randn(5, 1, 2, 2), torch.randn(5, 1, 2, 2)  # 4 pixels: |w| = 2w
    close(losses.gradient_penalty(Linear(w), real, fake), expected)


@pytest.mark.parametrize("w", [0.5, 2.0])
def test_squared_gradient_norm_of_a_linear_critic(w):
    x = torch.randn(5, 1, 2, 2, requires_grad=True)  # grad = w at 4 pixels: ||grad||^2 = 4 w^2
    close(losses.squared_gradient_norm(Linear(w)(x), x).detach(), 4 * w * w)


def test_squared_gradient_norm_by_hand_and_under_a_loss_scale():
    # D(x) = sum(tanh(a * x)): dD/dx = a (1 - tanh(a x)^2), per image
    x = torch.randn(6, 1, 3, 3, requires_grad=True)
    a = 1.7
    out = torch.tanh(a * x).flatten(1).sum(1)
    by_hand = (a * (1 - torch.tanh(a * x) ** 2)).flatten(1).pow(2).sum(1).mean()
    by_hand = float(by_hand.detach())
    close(losses.squared_gradient_norm(out, x).detach(), by_hand)
    scaled = losses.squared_gradient_norm(torch.tanh(a * x).flatten(1).sum(1), x, loss_scale=1024)
    close(scaled.detach(), by_hand)
    # it stays in the graph: R1 trains the critic
    w = torch.tensor(a, requires_grad=True)
    losses.squared_gradient_norm(torch.tanh(w * x).flatten(1).sum(1), x).backward()
    assert w.grad is not None and w.grad != 0


def test_lecam_penalty_by_hand():
    real, fake = torch.tensor([1.0, 3.0, -2.0]), torch.tensor([-1.0, 0.5, 4.0])
    # relu(real - a_F)^2 with a_F = 0: 1, 9, 0; relu(a_R - fake)^2 with a_R = 2: 9, 2.25, 0
    expected = (1 + 9 + 0) / 3 + (9 + 2.25 + 0) / 3
    close(losses.lecam_penalty(real, fake, torch.tensor(2.0), torch.tensor(0.0)), expected)


def test_regularizer_settings_are_checked():
    loss = losses.Hinge(r1=10, r2=1, reg_every=16, lecam=0.3, lecam_decay=0.9)
    assert (loss.r1, loss.r2, loss.reg_every, loss.lecam, loss.lecam_decay) == (10, 1, 16, 0.3, 0.9)
    assert loss.input_gradients and not losses.Hinge(lecam=1).input_gradients
    assert losses.WassersteinGP().input_gradients and losses.WassersteinGP().r1 == 0
    for bad in ({"r1": -1}, {"reg_every": 0}, {"lecam": -0.1}, {"lecam_decay": 1.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            losses.NonSaturating(**bad)


def test_gaussian_kl():
    # 0.5 * [(1 + 1 - 0 - 1) + (0 + 2 - ln 2 - 1)]
    kl = losses.gaussian_kl(t([[1.0, 0.0]]), t([[0.0, math.log(2)]]))
    close(kl, 0.5 * (1 + 1 - math.log(2)))
    close(losses.gaussian_kl(torch.zeros(3, 4), torch.zeros(3, 4)).sum(), 0.0)


def test_likelihoods():
    close(losses.bernoulli_nll(t([[0.0, 0.0]]), t([[1.0, 0.5]])), 2 * math.log(2))
    # 0.5 * ((0.1 - 0) / 0.1)^2 + ln 0.1 + 0.5 ln(2 pi)
    close(losses.gaussian_nll(t([[0.0]]), t([[0.1]]), 0.1), 0.5 + math.log(0.1) + 0.918939)


def test_elbo_weights_the_kl_term_by_beta():
    decoded = torch.zeros(2, 1, 2, 2)  # Bernoulli logits 0: ln 2 per pixel, 4 pixels
    x = torch.full((2, 1, 2, 2), -1.0)
    mu, logvar = t([[1.0], [1.0]]), torch.zeros(2, 1)  # KL 0.5 per image
    terms = losses.ELBO(beta=4.0)(decoded, x, mu, logvar)
    close(terms["recon"], 4 * math.log(2))
    close(terms["kl"], 0.5)
    close(terms["loss"], 4 * math.log(2) + 4.0 * 0.5)


def test_elbo_mean_image_is_in_data_range():
    out = torch.linspace(-20, 20, 11)
    for likelihood in ("bernoulli", "gaussian"):
        mean = losses.ELBO(likelihood).mean(out)
        assert mean.min() >= -1 and mean.max() <= 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"beta": -1}, "beta"), ({"sigma": 0}, "sigma"), ({"likelihood": "poisson"}, "likelihood")],
)
def test_elbo_refuses_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        losses.ELBO(**kwargs)


def test_wgan_gp_settings():
    loss = losses.WassersteinGP(gp_weight=5, n_critic=3)
    assert (loss.gp_weight, loss.n_critic) == (5.0, 3)
    with pytest.raises(ValueError, match="n_critic"):
        losses.WassersteinGP(n_critic=0)
    assert losses.NonSaturating().n_critic == 1 and losses.Hinge().gp_weight == 0
