"""The flow family: its ODE solvers checked against exact solutions and by their order, its
path, velocity and training times by value, and an exact resume."""

import math

import pytest
import torch

from genlab.losses import FlowMatchingLoss, path_velocity, straight_path
from genlab.models.flow_solvers import Euler, Heun, Midpoint
from tests.conftest import TINY_NETWORKS
from tests.test_resume import FAST, assert_resume_is_bit_identical

SOLVERS = (Euler, Heun, Midpoint)


@pytest.mark.parametrize("solver", SOLVERS)
def test_a_straight_path_is_solved_exactly_in_any_steps(solver):
    """The velocity of the straight path from noise e to image a is e - a everywhere: every
    solver lands on a, from one evaluation up."""
    e, a = torch.tensor([[0.9, -0.3]]), torch.tensor([[-0.5, 0.7]])
    for steps in (1, 2, 5):
        x, _ = solver(steps).solve(lambda x, t: (e - a).expand_as(x), e)
        assert torch.allclose(x, a, atol=1e-6)


@pytest.mark.parametrize("solver", SOLVERS)
def test_steps_are_network_evaluations(solver):
    calls = []

    def velocity(x, t):
        calls.append(float(t[0]))
        return torch.zeros_like(x)

    for steps in (1, 4, 5):
        calls.clear()
        solver(steps).solve(velocity, torch.zeros(3, 2))
        assert len(calls) == steps
        assert calls[0] == 1.0 and all(0 <= t <= 1 for t in calls)


@pytest.mark.parametrize(("solver", "order"), [(Euler, 1), (Heun, 2), (Midpoint, 2)])
def test_each_solver_has_its_order_on_a_smooth_field(solver, order):
    """dx/dt = x from x(1) = 0.5: x(0) = 0.5 / e. Doubling the evaluations divides the error by
    2 ** order."""
    x1, exact = torch.tensor([[0.5]], dtype=torch.float64), 0.5 / math.e

    def error(steps: int) -> float:
        x, _ = solver(steps).solve(lambda x, t: x, x1)
        return abs(float(x) - exact)

    ratio = error(16) / error(32)
    assert ratio == pytest.approx(2**order, rel=0.1)


def test_the_trajectory_ends_at_the_image():
    x, trajectory = Heun(8).solve(lambda x, t: torch.ones_like(x) * 0.1, torch.zeros(2, 1), keep=3)
    assert [t for t, _ in trajectory] == [1.0, 0.5, 0.0]
    assert torch.equal(trajectory[-1][1], x) and torch.allclose(x, torch.full((2, 1), -0.1))
    with pytest.raises(ValueError, match="steps must be >= 1"):
        Euler(0)


def test_the_straight_path_and_its_velocity_by_value():
    x0 = torch.tensor([[[[0.5, -1.0]]], [[[1.0, 0.0]]]])
    noise = torch.tensor([[[[-0.5, 1.0]]], [[[3.0, 2.0]]]])
    t = torch.tensor([0.25, 1.0])
    # image 0 a quarter of the way: 0.75 * x0 + 0.25 * noise; image 1 at the noise
    expected = torch.tensor([[[[0.25, -0.5]]], [[[3.0, 2.0]]]])
    assert torch.allclose(straight_path(x0, noise, t), expected)
    assert torch.equal(path_velocity(x0, noise), noise - x0)
    loss = FlowMatchingLoss()
    assert float(loss(torch.zeros(2, 3), torch.full((2, 3), 2.0))) == 4.0


def test_logit_normal_times_put_more_of_them_mid_path():
    torch.manual_seed(0)
    uniform = FlowMatchingLoss().draw(100_000, torch.device("cpu"))
    logit = FlowMatchingLoss("logit_normal").draw(100_000, torch.device("cpu"))
    middle = [float(((t > 0.25) & (t < 0.75)).float().mean()) for t in (uniform, logit)]
    assert middle[0] == pytest.approx(0.5, abs=0.01)
    # P(|N(0, 1)| < logit(0.75) = ln 3) = 2 Phi(1.0986) - 1 = 0.728
    assert middle[1] == pytest.approx(0.728, abs=0.01)
    shifted = FlowMatchingLoss("logit_normal", mean=1.0).draw(100_000, torch.device("cpu"))
    assert float(shifted.median()) == pytest.approx(1 / (1 + math.exp(-1.0)), abs=0.01)
    with pytest.raises(ValueError, match="times must be"):
        FlowMatchingLoss("cosine")


def test_a_conditional_flow_resumes_bit_identically(tmp_path):
    setup = ["model=flow", "model.conditional=true", "loss.times=logit_normal"]
    setup += ["model.ema_start=1", "dataset=digits", *TINY_NETWORKS["flow"], *FAST]
    assert_resume_is_bit_identical(setup, tmp_path)
