"""The flow family's samplers (the `solver` group for `model=flow`): ODE solvers that integrate a
learnt velocity field from noise (t = 1) to an image (t = 0). The fixed-step ones spend `steps`
network evaluations (NFE), the number every protocol reports; `Dopri5` adapts its steps to a
tolerance and reports the NFE it spent.

Euler spends one evaluation per interval. Midpoint spends two (given an odd NFE its last
interval is an Euler step). Heun (the trapezoidal rule's predictor-corrector) spends two, but, as
EDM's sampler (Karras et al. 2022, Algorithm 1), its last interval is an Euler step: its corrector
would evaluate the velocity at t = 0, where a point off the data has none (the learnt field there
grows as 1/t), and that left speckles on the images. Any NFE from 1 up works and is spent
exactly. `log_density` runs the ODE the other way, from an image to noise, for the flow's
likelihood, with torchdiffeq's adaptive Dormand-Prince solver.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

from genlab.errors import require_at_least
from genlab.models.common import check_guidance

# (x_t, t) -> dx/dt at time t (one per image, in [0, 1]), guided
Velocity = Callable[[Tensor, Tensor], Tensor]
State = TypeVar("State", Tensor, tuple[Tensor, ...])


class FlowSolver:
    """Integrates dx/dt = velocity(x, t) from t = 1 to t = 0, with classifier-free guidance
    scale `guidance` for class-conditional models (1: the conditional model alone, 0: the
    unconditional one). Deterministic: the same noise always gives the same image."""

    name: ClassVar[str]
    deterministic: ClassVar[bool] = True
    shift: float = 1.0  # the time grid's shift (FixedSteps), 1 for none

    def __init__(self, guidance: float = 1.0) -> None:
        self.guidance = check_guidance(guidance)

    def solve(
        self, velocity: Velocity, noise: Tensor, keep: int = 0
    ) -> tuple[Tensor, list[tuple[float, Tensor]]]:
        """Images from `noise` (x at t = 1), and `keep` evenly spaced (t, x_t) pairs of the
        trajectory ending with the result at t = 0."""
        raise NotImplementedError

    def cost(self) -> str:
        """The network evaluations per image, in words."""
        raise NotImplementedError

    def protocol(self) -> dict[str, Any]:
        """How the images were made, written beside every metric."""
        raise NotImplementedError


class FixedSteps(FlowSolver):
    """A solver spending `steps` network evaluations on a grid of times uniform in u,
    t = shift u / (1 + (shift - 1) u) (Stable Diffusion 3's and diffusers'
    FlowMatchEulerDiscreteScheduler's `shift`): shift > 1 spends the steps nearer the noise,
    shift < 1 nearer the image."""

    def __init__(self, steps: int = 10, guidance: float = 1.0, shift: float = 1.0) -> None:
        super().__init__(guidance)
        require_at_least(1, steps=steps)
        if not shift > 0:
            raise ValueError(f"shift must be > 0, got {shift}")
        self.steps, self.shift = steps, float(shift)

    def plan(self) -> list[int]:
        """Network evaluations per interval, from t = 1; they sum to `steps`."""
        return [1] * self.steps

    @torch.no_grad()
    def solve(
        self, velocity: Velocity, noise: Tensor, keep: int = 0
    ) -> tuple[Tensor, list[tuple[float, Tensor]]]:
        intervals = self.intervals(velocity, noise.device)
        n = len(intervals)
        marks = {round(i * (n - 1) / max(keep - 1, 1)) for i in range(keep - 1)}
        x, trajectory = noise, []
        for i, (t, advance) in enumerate(intervals):
            if i in marks:
                trajectory.append((t, x))
            x = advance(x)
        if keep:
            trajectory.append((0.0, x))
        return x.clamp(-1, 1), trajectory

    def intervals(
        self, velocity: Velocity, device: torch.device
    ) -> list[tuple[float, Callable[[Tensor], Tensor]]]:
        """The intervals from t = 1 to 0: each one's start and the step across it."""
        plan = self.plan()
        times = [self.time(u) for u in torch.linspace(1.0, 0.0, len(plan) + 1).tolist()]
        return [
            (t, partial(self.step, velocity, t=t, h=end - t, spent=spent))  # h < 0: to the image
            for t, end, spent in zip(times[:-1], times[1:], plan, strict=True)
        ]

    def time(self, u: float) -> float:
        """The grid's time at `u` of the uniform grid from 1 to 0."""
        return self.shift * u / (1 + (self.shift - 1) * u)

    def step(self, velocity: Velocity, x: Tensor, t: float, h: float, spent: int) -> Tensor:
        """x at t + h from x at t, in `spent` evaluations (one: Euler)."""
        return x + h * _at(velocity, x, t)

    def cost(self) -> str:
        return f"{self.steps} NFE"

    def protocol(self) -> dict[str, Any]:
        """The solver, its NFE and guidance, and the shift where not 1."""
        shift = {"time_shift": self.shift} if self.shift != 1 else {}
        return {
            "sampler": self.name,
            "sampler_steps": self.steps,
            "guidance": self.guidance,
            **shift,
        }


def _at(velocity: Velocity, x: Tensor, t: float) -> Tensor:
    return velocity(x, torch.full((len(x),), t, device=x.device, dtype=x.dtype)).to(x.dtype)


def _adaptive(
    slope: Callable[[Tensor, State], State], start: State, times: Tensor, tolerance: float
) -> tuple[State, int]:
    """The ODE d state/dt = slope(t, state) solved from `start` at times[0] by torchdiffeq's
    Dormand-Prince (dopri5) to relative and absolute `tolerance`, its states at `times`, and the
    slope's evaluations it spent."""
    from torchdiffeq import odeint

    evaluations = 0

    def counted(t: Tensor, state: State) -> State:
        nonlocal evaluations
        evaluations += 1
        return slope(t, state)

    states = odeint(counted, start, times, rtol=tolerance, atol=tolerance, method="dopri5")
    return states, evaluations


def log_density(
    velocity: Velocity, x0: Tensor, gen: torch.Generator, tolerance: float = 1e-5
) -> tuple[Tensor, int]:
    """log p(x0) per image, in nats, of the density the flow carries from the standard normal at
    t = 1, and the network evaluations it took: x0 is carried from t = 0 to 1 along dx/dt =
    velocity, and log p(x0) = log N(x1) + the integral of the velocity's divergence (the
    instantaneous change of variables, Chen et al. 2018). The divergence is Hutchinson's
    estimate with one Rademacher probe per image held along the path (FFJORD's): unbiased, and
    exact for a field whose Jacobian is diagonal. The ODE is solved by torchdiffeq's Dormand-Prince
    (dopri5) to relative and absolute `tolerance` (1e-5: FFJORD's and Song et al. 2021's): the
    field is steep near t = 0, where a fixed grid misses it."""
    probe = torch.randint(0, 2, x0.shape, generator=gen, device=x0.device).to(x0.dtype) * 2 - 1

    def slope(t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        with torch.enable_grad():
            x = state[0].detach().requires_grad_(True)
            v = _at(velocity, x, float(t))
            (probed,) = torch.autograd.grad(v, x, probe)
        return v.detach(), (probed * probe).flatten(1).sum(1)

    start = (x0, torch.zeros(len(x0), device=x0.device, dtype=x0.dtype))
    ends = torch.tensor([0.0, 1.0], device=x0.device, dtype=x0.dtype)
    with torch.no_grad():
        (xs, divergences), evaluations = _adaptive(slope, start, ends, tolerance)
    x, dims = xs[-1], x0[0].numel()
    prior = -0.5 * x.flatten(1).pow(2).sum(1) - 0.5 * dims * math.log(2 * math.pi)
    return prior + divergences[-1], evaluations


class Euler(FixedSteps):
    """Euler's method: one evaluation per interval (first order)."""

    name = "euler"


class Heun(FixedSteps):
    """Heun's method: an Euler step, then the mean of the slopes at its two ends (second
    order); the last interval, ending at t = 0, an Euler step (EDM's), and so is the first when
    the NFE is even."""

    name = "heun"

    def plan(self) -> list[int]:
        plan = [2] * (self.steps // 2) + [1]
        if self.steps % 2 == 0:
            plan[0] = 1
        return plan

    def step(self, velocity: Velocity, x: Tensor, t: float, h: float, spent: int) -> Tensor:
        d = _at(velocity, x, t)
        if spent < 2:
            return x + h * d
        return x + h * (d + _at(velocity, x + h * d, t + h)) / 2


class Midpoint(FixedSteps):
    """The midpoint method: the slope half an interval ahead (second order)."""

    name = "midpoint"

    def plan(self) -> list[int]:
        return [2] * (self.steps // 2) + [1] * (self.steps % 2)

    def step(self, velocity: Velocity, x: Tensor, t: float, h: float, spent: int) -> Tensor:
        d = _at(velocity, x, t)
        if spent < 2:
            return x + h * d
        return x + h * _at(velocity, x + h / 2 * d, t + h / 2)


class DPMSolver(FixedSteps):
    """DPM-Solver++ 2M (Lu et al. 2022) on the flow's straight path: diffusers'
    `DPMSolverMultistepScheduler` with flow sigmas and flow prediction (as Wan and SANA sample),
    one evaluation per step, second order from the second step on by reusing the previous
    step's prediction (first order in the last steps below 15, diffusers' `lower_order_final`).
    Its grid is diffusers': `steps` times from 1 - 1/1000 down (shifted by `shift`), then 0."""

    name = "flow_dpm_solver"

    def intervals(
        self, velocity: Velocity, device: torch.device
    ) -> list[tuple[float, Callable[[Tensor], Tensor]]]:
        from diffusers import DPMSolverMultistepScheduler

        scheduler = DPMSolverMultistepScheduler(
            num_train_timesteps=1000,
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            flow_shift=self.shift,
        )
        scheduler.set_timesteps(self.steps, device=device)

        def step(x: Tensor, t: float, timestep: Tensor) -> Tensor:
            return scheduler.step(_at(velocity, x, t), timestep, x).prev_sample

        sigmas = scheduler.sigmas.tolist()
        return [
            (sigma, partial(step, t=sigma, timestep=timestep))
            for sigma, timestep in zip(sigmas, scheduler.timesteps, strict=False)
        ]


class Dopri5(FlowSolver):
    """torchdiffeq's adaptive Dormand-Prince (dopri5, fifth order): steps as small as the field
    needs for the relative and absolute `tolerance` per batch, so the NFE is measured, not set:
    the protocol reports the mean over the batches solved so far (`sampler_nfe`) and names the
    tolerance. The reference the fixed-step solvers approach."""

    name = "dopri5"

    def __init__(self, tolerance: float = 1e-5, guidance: float = 1.0) -> None:
        super().__init__(guidance)
        if not 0 < tolerance < 1:
            raise ValueError(f"tolerance must be in (0, 1), got {tolerance}")
        self.tolerance, self.spent = float(tolerance), []

    @torch.no_grad()
    def solve(
        self, velocity: Velocity, noise: Tensor, keep: int = 0
    ) -> tuple[Tensor, list[tuple[float, Tensor]]]:
        def slope(t: Tensor, x: Tensor) -> Tensor:
            return _at(velocity, x, float(t))

        times = torch.linspace(1.0, 0.0, max(keep, 2), device=noise.device, dtype=noise.dtype)
        xs, evaluations = _adaptive(slope, noise, times, self.tolerance)
        self.spent.append(evaluations)
        trajectory = list(zip(times.tolist(), xs, strict=True))[-keep:] if keep else []
        return xs[-1].clamp(-1, 1), trajectory

    def cost(self) -> str:
        return f"adaptive to {self.tolerance:g}"

    def protocol(self) -> dict[str, Any]:
        """The tolerance, and the mean NFE per batch once a batch has been solved."""
        nfe = {"sampler_nfe": round(sum(self.spent) / len(self.spent))} if self.spent else {}
        return {"sampler": self.name, "tolerance": self.tolerance, **nfe, "guidance": self.guidance}
