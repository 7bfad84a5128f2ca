"""The diffusion family's samplers (the `solver` config group, a diffusion model's
`model.sampler`): how it turns noise into images, from diffusers' schedulers. Used by the grids
during training, `genlab eval` and `genlab sample` (which take the run's solver unless the
command line chooses another: `solver=dpm_solver solver.steps=10`, or settings alone:
`solver.guidance=2`).

(genlab calls them solvers because `scheduler` is the learning-rate group; diffusers calls them
schedulers.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import Tensor

from genlab.models.common import check_guidance
from genlab.models.denoising import DIFFUSERS_PREDICTION

if TYPE_CHECKING:  # diffusers is imported when a scheduler is made: it takes seconds to import
    from diffusers import DDPMScheduler
    from diffusers.schedulers.scheduling_utils import SchedulerMixin

Spacing = Literal["leading", "trailing", "linspace"]
# (x_t, t) -> the network's output at that step, guided
Denoiser = Callable[[Tensor, Tensor], Tensor]


class Solver:
    """A sampler of the reverse process in `steps` network evaluations, with classifier-free
    guidance scale `guidance` for class-conditional models (Ho & Salimans 2022: the output is
    unconditional + guidance * (conditional - unconditional); 1 is the conditional model alone,
    0 the unconditional one). With `clip`, each step's prediction of the clean image is clipped
    to the data range [-1, 1] and the step continues from the clipped prediction alone (Ho et
    al.'s sampler; for DDIM, the noise is re-derived from it, as GLIDE does)."""

    name: ClassVar[str]
    scheduler_class: ClassVar[str]  # the diffusers scheduler's class name
    deterministic: ClassVar[bool] = True  # the same noise always gives the same image

    def __init__(
        self,
        steps: int | None,
        guidance: float = 1.0,
        spacing: Spacing = "trailing",
        clip: bool = True,
    ) -> None:
        if steps is not None and steps < 1:
            raise ValueError(f"steps must be >= 1 or null (every training timestep), got {steps}")
        if spacing not in ("leading", "trailing", "linspace"):
            raise ValueError(f"spacing must be leading, trailing or linspace, got {spacing!r}")
        self.steps, self.spacing, self.clip = steps, spacing, clip
        self.guidance = check_guidance(guidance)

    def scheduler(self, schedule: Mapping[str, Any]) -> SchedulerMixin:
        """A fresh diffusers scheduler for the model's training `schedule` (a scheduler config),
        set to this solver's steps."""
        import diffusers

        steps = self.steps_for(schedule)
        scheduler = getattr(diffusers, self.scheduler_class).from_config(
            schedule, timestep_spacing=self.spacing, **self.options()
        )
        scheduler.set_timesteps(steps)
        return scheduler

    def steps_for(self, schedule: Mapping[str, Any]) -> int:
        """Network evaluations per image: `steps`, at most the training timesteps (all if null)."""
        total = schedule["num_train_timesteps"]
        return total if self.steps is None else min(self.steps, total)

    def options(self) -> dict[str, Any]:
        """Settings of the diffusers scheduler beyond the training schedule."""
        return {"clip_sample": self.clip}

    def step_options(self) -> dict[str, Any]:
        """Arguments of each `scheduler.step` beyond the model output, timestep and sample."""
        return {}

    @torch.no_grad()
    def solve(
        self,
        denoise: Denoiser,
        noise: Tensor,
        schedule: Mapping[str, Any],
        generator: torch.Generator | None = None,
        keep: int = 0,
    ) -> tuple[Tensor, list[tuple[int, Tensor]]]:
        """Images from `noise` (x_T), and `keep` evenly spaced (timestep, x_t) pairs of the
        trajectory ending with the result at timestep -1. Randomness comes only from
        `generator`."""
        scheduler = self.scheduler(schedule)
        timesteps = scheduler.timesteps.tolist()
        marks = {round(i * (len(timesteps) - 1) / max(keep - 1, 1)) for i in range(keep - 1)}
        x = noise * scheduler.init_noise_sigma
        trajectory = []
        for i, t in enumerate(timesteps):
            if i in marks:
                trajectory.append((t, x))
            step_t = torch.full((len(x),), t, device=x.device, dtype=torch.long)
            out = denoise(scheduler.scale_model_input(x, t), step_t)
            x = scheduler.step(
                out.float(), t, x, generator=generator, **self.step_options()
            ).prev_sample
        if keep:
            trajectory.append((-1, x))
        return x.clamp(-1, 1), trajectory

    def protocol(self, schedule: Mapping[str, Any]) -> dict[str, Any]:
        """How the images were made, written beside every metric."""
        return {
            "sampler": self.name,
            "sampler_steps": self.steps_for(schedule),
            "guidance": self.guidance,
            "clip": self.clip,
        }


class DDPM(Solver):
    """Ancestral sampling (Ho et al. 2020) through every training timestep (`steps` null)."""

    name = "ddpm"
    scheduler_class = "DDPMScheduler"
    deterministic = False

    def __init__(
        self,
        steps: int | None = None,
        guidance: float = 1.0,
        spacing: Spacing = "leading",
        clip: bool = True,
    ) -> None:
        super().__init__(steps, guidance, spacing, clip)


class DDIM(Solver):
    """DDIM (Song et al. 2021): deterministic at `eta` 0, ancestral-like at 1."""

    name = "ddim"
    scheduler_class = "DDIMScheduler"

    def __init__(
        self,
        steps: int = 50,
        eta: float = 0.0,
        guidance: float = 1.0,
        spacing: Spacing = "trailing",
        clip: bool = True,
    ) -> None:
        super().__init__(steps, guidance, spacing, clip)
        if not 0 <= eta <= 1:
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        self.eta = float(eta)
        self.deterministic = eta == 0

    def step_options(self) -> dict[str, Any]:
        return {"eta": self.eta, "use_clipped_model_output": self.clip}

    def protocol(self, schedule: Mapping[str, Any]) -> dict[str, Any]:
        return {**super().protocol(schedule), "eta": self.eta}


class DPMSolver(Solver):
    """DPM-Solver++ (2M) (Lu et al. 2022): second-order multistep, good in 10-20 steps."""

    name = "dpm_solver"
    scheduler_class = "DPMSolverMultistepScheduler"

    def __init__(
        self,
        steps: int = 20,
        guidance: float = 1.0,
        spacing: Spacing = "trailing",
        clip: bool = True,
    ) -> None:
        super().__init__(steps, guidance, spacing, clip)

    def options(self) -> dict[str, Any]:
        # thresholding with a largest value of 1 clips the predicted clean image to [-1, 1]
        # (Imagen's dynamic threshold s is held to [1, sample_max_value])
        return {
            "algorithm_type": "dpmsolver++",
            "solver_order": 2,
            "thresholding": self.clip,
            "sample_max_value": 1.0,
        }


def training_schedule(
    timesteps: int, schedule: str, prediction: str, beta_start: float, beta_end: float
) -> DDPMScheduler:
    """The noise schedule a model trains with, as diffusers' DDPM scheduler (whose config every
    solver and the exported pipeline start from): `linear` (Ho et al.) or `cosine` (Nichol &
    Dhariwal 2021, diffusers' `squaredcos_cap_v2`)."""
    from diffusers import DDPMScheduler

    names = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
    return DDPMScheduler(
        num_train_timesteps=timesteps,
        beta_schedule=names[schedule],
        beta_start=beta_start,
        beta_end=beta_end,
        prediction_type=DIFFUSERS_PREDICTION[prediction],
        clip_sample=True,
    )
