"""The flow family: its ODE solvers checked against exact solutions and by their order, its
path, velocity and training times by value, its likelihood against exact densities, its
diffusers export against genlab's sampler, and an exact resume."""

import math

import pytest
import torch

from genlab.config import build, build_model
from genlab.files import Outputs
from genlab.loading import protocol_tag
from genlab.losses import FlowMatchingLoss, path_velocity, straight_path
from genlab.metrics.likelihood import BIN_NATS, dequantize
from genlab.models.flow_solvers import Dopri5, DPMSolver, Euler, Heun, Midpoint, log_density
from tests.conftest import TINY_NETWORKS, make_cfg
from tests.test_diffusion import load_offline
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


def test_heun_never_evaluates_at_the_image_time():
    """EDM's Heun: its last interval is an Euler step (no velocity at t = 0), and the first too
    when the NFE is even, so that the NFE is spent exactly."""
    plans = [[1], [1, 1], [2, 1], [1, 2, 1], [1, 2, 2, 2, 2, 1]]
    assert [Heun(n).plan() for n in (1, 2, 3, 4, 10)] == plans
    calls = []
    Heun(7).solve(lambda x, t: calls.append(float(t[0])) or torch.zeros_like(x), torch.zeros(1, 2))
    assert len(calls) == 7 and min(calls) == pytest.approx(0.25)  # 4 intervals: 1, .75, .5, .25


def test_the_shift_moves_the_time_grid_as_diffusers_does():
    """shift 3 on 4 Euler steps: t = 3u / (1 + 2u) for u = 1, .75, .5, .25; the protocol and
    the report's name say so, and a shift of 1 is the uniform grid, named as before."""
    calls = []
    solver = Euler(4, shift=3.0)
    solver.solve(lambda x, t: calls.append(float(t[0])) or torch.zeros_like(x), torch.zeros(1, 2))
    assert calls == pytest.approx([1.0, 0.9, 0.75, 0.5])
    assert protocol_tag(solver.protocol()) == "_euler4_shift3"
    assert protocol_tag(Euler(4).protocol()) == "_euler4"
    with pytest.raises(ValueError, match="shift must be > 0, got 0"):
        Euler(4, shift=0)


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


def _gaussian_flow(m: float, s: float, calls: list[float]):
    """Data N(m, s^2): the straight path's exact velocity E[e - x0 | x_t], which carries noise e
    to m + s e; each call's time appended to `calls`."""

    def velocity(x, t):
        calls.append(float(t[0]))
        t = t.view(-1, 1).double()
        var, d = (1 - t) ** 2 * s**2 + t**2, x - (1 - t) * m
        return t / var * d - (m + (1 - t) * s**2 / var * d)

    return velocity


def test_dpm_solver_lands_a_curved_flow_closer_than_heun():
    """On the Gaussian's exact flow DPM-Solver++ 2M (diffusers', on flow sigmas) in 20
    evaluations lands within 0.01 of m + s e, several times closer than Heun or Euler in as
    many, and spends exactly its NFE."""
    m, s = 0.5, 0.2
    calls = []
    velocity = _gaussian_flow(m, s, calls)
    e = torch.linspace(-2, 2, 9, dtype=torch.float64).view(9, 1)

    def error(solver) -> float:
        x, _ = solver.solve(velocity, e)
        return float((x - (m + s * e)).abs().max())

    ours = error(DPMSolver(20))
    assert len(calls) == 20 and calls == sorted(calls, reverse=True) and calls[0] < 1
    assert ours < 0.01 and ours < error(Heun(20)) / 5 and ours < error(Euler(20)) / 5
    x, trajectory = DPMSolver(6).solve(velocity, e, keep=3)
    assert [t for t, _ in trajectory] == pytest.approx([0.999, 0.666, 0.0])  # diffusers grid
    assert torch.equal(trajectory[-1][1], x)
    model, _ = _tiny_flow("solver=flow_dpm_solver", "solver.steps=3", "solver.shift=3")
    images = model.generate(2, torch.Generator().manual_seed(1))
    assert images.shape == (2, 1, 32, 32) and torch.equal(
        images, model.generate(2, torch.Generator().manual_seed(1))
    )
    assert model.sampling_protocol() == {
        "sampler": "flow_dpm_solver",
        "sampler_steps": 3,
        "guidance": 1.0,
        "time_shift": 3.0,
    }


def test_dopri5_meets_its_tolerance_and_reports_the_evaluations_it_spent():
    """torchdiffeq's dopri5 on the Gaussian's exact flow: near m + s e as its tolerance, more
    evaluations for a tighter one; and the protocol's NFE is the mean of what it spent."""
    m, s = 0.5, 0.2
    e = torch.linspace(-2, 2, 9, dtype=torch.float64).view(9, 1)
    loose, tight = Dopri5(tolerance=1e-3), Dopri5(tolerance=1e-7)
    assert loose.protocol() == {"sampler": "dopri5", "tolerance": 1e-3, "guidance": 1.0}
    spent, error = {}, {}
    for solver in (loose, tight):
        calls = []
        x, trajectory = solver.solve(_gaussian_flow(m, s, calls), e, keep=3)
        spent[solver.tolerance] = len(calls)
        error[solver.tolerance] = float((x - (m + s * e)).abs().max())
        assert [t for t, _ in trajectory] == [1.0, 0.5, 0.0] and torch.equal(trajectory[0][1], e)
    assert error[1e-7] < 1e-5 < error[1e-3] < 0.05  # the global error: a few times the local
    assert spent[1e-7] > 2 * spent[1e-3] and tight.protocol()["sampler_nfe"] == spent[1e-7]
    _, (last,) = tight.solve(_gaussian_flow(m, s, []), e, keep=1)
    assert last[0] == 0.0
    assert tight.protocol()["sampler_nfe"] == spent[1e-7]  # the same batch, the same cost
    assert protocol_tag(loose.protocol()) == "_dopri5_tol0.001"
    with pytest.raises(ValueError, match="tolerance must be in"):
        Dopri5(tolerance=0)


def test_the_trajectory_ends_at_the_image():
    x, trajectory = Heun(6).solve(lambda x, t: torch.ones_like(x) * 0.1, torch.zeros(2, 1), keep=3)
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


def test_u_shaped_times_put_more_of_them_near_both_ends():
    """Density cosh(a (t - 1/2)) / Z on [0, 1], a = 4: F(t) = (sinh(4 (t - 1/2)) + sinh 2) /
    (2 sinh 2), so P(t < 0.1) = P(t > 0.9) = (sinh 2 - sinh 1.6) / (2 sinh 2) = 0.1725 and
    P(0.4 < t < 0.6) = sinh 0.4 / sinh 2 = 0.1133 (uniform: 0.1 and 0.2)."""
    torch.manual_seed(0)
    t = FlowMatchingLoss("u_shaped").draw(200_000, torch.device("cpu"))
    assert float(t.min()) >= 0 and float(t.max()) <= 1
    assert float((t < 0.1).float().mean()) == pytest.approx(0.1725, abs=0.004)
    assert float((t > 0.9).float().mean()) == pytest.approx(0.1725, abs=0.004)
    assert float(((t > 0.4) & (t < 0.6)).float().mean()) == pytest.approx(0.1133, abs=0.004)
    with pytest.raises(ValueError, match="a must be > 0"):
        FlowMatchingLoss("u_shaped", a=0)


def test_the_pseudo_huber_distance_by_value():
    """Two images of D = 4 dimensions, c = 0.00054 * 4 = 0.00216: one off by 1 in every
    dimension (|v - u|^2 = 4), one exact: ((sqrt(4 + c^2) - c) + (c - c)) / 2 / 4."""
    loss = FlowMatchingLoss(distance="pseudo_huber")
    velocity, target = torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)
    velocity[0] = 1.0
    c = 0.00216
    assert float(loss(velocity, target)) == pytest.approx((math.sqrt(4 + c**2) - c) / 2 / 4)
    # near the target (|v - u| << c) it is the squared error over 2c: 1e-4^2 * 4 / (2c) / 4
    near = torch.full((1, 1, 2, 2), 1e-4)
    half_square = 1e-4**2 * 4 / (2 * c) / 4
    assert float(loss(near, torch.zeros_like(near))) == pytest.approx(half_square, rel=0.02)
    with pytest.raises(ValueError, match="distance must be"):
        FlowMatchingLoss(distance="l1")


def test_a_conditional_flow_resumes_bit_identically(tmp_path):
    setup = ["model=flow", "model.conditional=true", "loss.times=logit_normal"]
    setup += ["model.ema_start=1", "dataset=digits", *TINY_NETWORKS["flow"], *FAST]
    assert_resume_is_bit_identical(setup, tmp_path)


def _gaussian_log_density(x: torch.Tensor, var: float) -> torch.Tensor:
    d = x[0].numel()
    return -0.5 * x.flatten(1).pow(2).sum(1) / var - 0.5 * d * math.log(2 * math.pi * var)


def test_the_ode_likelihood_of_gaussian_data_is_its_density():
    """For data N(0, s^2 I) the straight path's marginal at t is N(0, v_t I), v_t = (1 - t)^2 s^2
    + t^2, and the exact velocity is x (dv_t/dt) / (2 v_t): the ODE's log density is the
    Gaussian's (the probe is exact on this diagonal Jacobian), to the adaptive solver's
    tolerance, in more evaluations for a tighter one."""
    s2 = 0.3**2
    x0 = torch.randn(5, 1, 3, 3, dtype=torch.float64) * 0.3

    def velocity(x, t):
        t = t.view(-1, 1, 1, 1)
        return x * (t - (1 - t) * s2) / ((1 - t) ** 2 * s2 + t**2)

    exact = _gaussian_log_density(x0, s2)

    def error(tolerance: float) -> tuple[float, int]:
        got, spent = log_density(velocity, x0, torch.Generator().manual_seed(0), tolerance)
        return float((got - exact).abs().max()), spent

    (loose, cheap), (tight, dear) = error(1e-3), error(1e-7)
    assert 1e-4 < loose < 1e-2 and tight < 1e-5 and dear > 2 * cheap


def test_the_divergence_estimate_is_unbiased_on_a_field_that_mixes_pixels():
    """v = M x (M not diagonal) carries x0 to exp(M) x0 with log p(x0) = log N(exp(M) x0) +
    tr M. Each image's estimate uses probe e: e^T M e; the mean over images is tr M."""
    gen = torch.Generator().manual_seed(1)
    m = 0.3 * torch.randn(4, 4, generator=gen, dtype=torch.float64)
    x0 = torch.full((20_000, 1, 2, 2), 0.1, dtype=torch.float64)

    def velocity(x, t):
        return (x.flatten(1) @ m.T).view_as(x)

    got, _ = log_density(velocity, x0, gen)
    x1 = (x0.flatten(1) @ torch.linalg.matrix_exp(m).T).view_as(x0)
    exact = _gaussian_log_density(x1, 1.0) + torch.trace(m)
    assert float(got.std()) > 0.1  # single estimates scatter...
    assert float(got.mean()) == pytest.approx(float(exact[0]), abs=0.02)  # ...about tr M


def _tiny_flow(*overrides: str):
    cfg = make_cfg("model=flow", "dataset=digits", *TINY_NETWORKS["flow"], *overrides)
    torch.manual_seed(0)
    return build_model(cfg, build(cfg.dataset, "dataset")).eval(), cfg


def test_the_flow_likelihood_adds_the_bins_to_the_dequantized_density():
    """A network of zero velocity leaves noise where it is: the density is the standard
    normal's, of the dequantized images, and each dimension's bin adds log 128. The protocol
    counts the network's evaluations."""
    model, _ = _tiny_flow()
    for p in model.network.parameters():
        torch.nn.init.zeros_(p)
    calls = []
    model.network.register_forward_hook(lambda *_: calls.append(1))
    images = torch.randint(0, 256, (6, 1, 8, 8)).float() / 127.5 - 1
    values, protocol = model.likelihood(images, 4, seed=3)
    x = dequantize(images, torch.Generator().manual_seed(3))
    expected = float(-_gaussian_log_density(x.double(), 1.0).mean()) + 64 * BIN_NATS
    assert values["nll_ode"] == pytest.approx(expected, rel=1e-5)
    assert values["nll_ode_bits_per_dim"] == pytest.approx(expected / (64 * math.log(2)))
    assert protocol["likelihood_evaluations"] == len(calls) > 0
    assert model.likelihood(images, 0, seed=3) == ({}, {})


def test_the_export_loads_in_diffusers_offline_and_steps_as_genlab_euler(tmp_path, monkeypatch):
    """diffusers' FlowMatchEulerDiscreteScheduler in one step is genlab's Euler in one step:
    the same time scale, velocity sign and output range."""
    from genlab.export import export

    model, cfg = _tiny_flow("solver=euler", "solver.steps=1", "solver.shift=2")
    messages = export(model, cfg, {"step": 0}, Outputs(tmp_path))
    assert "FlowMatchEulerDiscreteScheduler" in messages[1]
    pipe = load_offline(tmp_path / "diffusers", monkeypatch)
    assert pipe.scheduler.config.shift == 2.0  # one step goes from 1 to 0 whatever the shift
    gen = torch.Generator().manual_seed(4)
    out = pipe(batch_size=2, generator=gen, num_inference_steps=1, output_type="np").images
    ours = model.generate(2, torch.Generator().manual_seed(4))
    torch.testing.assert_close(
        torch.from_numpy(out).permute(0, 3, 1, 2), (ours + 1) / 2, atol=1e-5, rtol=0
    )
