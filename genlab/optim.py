"""Optimizers from config (one torch class, a learning rate per network) and guarded updates."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal

import torch
from torch import Tensor
from torch.optim import Optimizer


class OptimizerSpec:
    """Builds the optimizer of each network of a model (each key of its family's `roles`): at `lr`
    (a GAN's generator, a VAE), or at the learning rate the family passes, such as `d_lr` for a
    GAN's discriminator (defaults to `lr`; set it for two time-scale updates). `fused` picks
    torch's fused implementation (one kernel per step, and updates the guard can skip without a
    host sync) for optimizers that have one, unless `impl` sets `fused` or `foreach` itself."""

    def __init__(
        self,
        impl: Callable[..., Optimizer],
        lr: float,
        d_lr: float | None = None,
        fused: bool = True,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if d_lr is not None and d_lr <= 0:
            raise ValueError(f"d_lr must be > 0 (or null to use lr), got {d_lr}")
        self.impl, self.lr, self.d_lr = impl, float(lr), d_lr
        chosen = set(getattr(impl, "keywords", {})) & {"fused", "foreach"}
        self.fused = fused and not chosen and "fused" in inspect.signature(impl).parameters

    def __call__(self, params: Iterable[Tensor], lr: float | None = None) -> Optimizer:
        """The optimizer of `params` at `lr` (None: `self.lr`)."""
        lr = self.lr if lr is None else lr
        return self.impl(params, lr=lr, **({"fused": True} if self.fused else {}))


class NonFiniteError(RuntimeError):
    """A loss or gradient that is NaN or infinite; the update was not applied."""

    def __init__(self, name: str, network: str, loss: float, grad_norm: float) -> None:
        super().__init__(f"non-finite {network} update (loss {loss}, gradient norm {grad_norm})")
        self.name, self.loss, self.grad_norm = name, loss, grad_norm


Precision = Literal[32, "32", "bf16", "16-mixed"]
AUTOCAST_DTYPES = {"32": None, "bf16": torch.bfloat16, "16-mixed": torch.float16}


def precision_dtype(precision: Precision) -> torch.dtype | None:
    """The autocast dtype of a precision setting (None for float32), or a ValueError."""
    if str(precision) not in AUTOCAST_DTYPES:
        raise ValueError(f"precision must be 32, bf16 or 16-mixed, got {precision!r}")
    return AUTOCAST_DTYPES[str(precision)]


def autocast_dtype(precision: Precision, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a precision setting, or a ValueError if `device` cannot run it."""
    dtype = precision_dtype(precision)
    if dtype is None:
        return None
    if not torch.amp.is_autocast_available(device.type):
        raise ValueError(f"precision={precision}: torch has no autocast for {device.type}")
    if device.type == "cuda" and dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision=bf16: {torch.cuda.get_device_name(device)} lacks bfloat16")
    with warnings.catch_warnings(record=True) as caught:  # torch warns, then disables autocast
        warnings.simplefilter("always")
        torch.autocast(device.type, dtype=dtype)
    if caught:
        raise ValueError(f"precision={precision} on {device.type}: {caught[0].message}")
    return dtype


def total_norm(grads: list[Tensor]) -> Tensor:
    """The L2 norm of all `grads` together, in float32 (`get_total_norm` without its per-call
    grouping by device and dtype: the gradients of one optimizer share a device)."""
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float())


def _zero_if(skipped: Tensor, params: list[Tensor], optimizer: Optimizer) -> None:
    """Zero the state `optimizer` made for `params` at a step it `skipped` (a device flag), as
    it was before any step."""
    for p in params:
        for v in optimizer.state[p].values():
            if isinstance(v, Tensor) and v.is_floating_point() and v.shape == p.shape:
                v.masked_fill_(skipped, 0.0)


class Updater:
    """Backward pass and optimizer step for each network, with the run's precision and guards.

    `precision` is 32 (float32), `bf16` (bfloat16 autocast) or `16-mixed` (float16 autocast with
    a dynamic loss scale per network, torch's GradScaler). The gradient norm is measured before
    the step where it is asked for (at logging steps) or needed, and `grad_clip` (if set) clips
    it. A NaN or infinite loss or gradient never reaches the weights:

    - with a fused optimizer (`OptimizerSpec.fused`, the default for Adam, AdamW and SGD) and
      32 or bf16, the optimizer's own kernel skips the update on the device, with no host sync;
      `collect()` returns how many were skipped since its last call;
    - otherwise the check syncs and raises `NonFiniteError` before the step. Under `16-mixed`
      such a step is first taken for a loss-scale overflow: it is skipped and the scale halved
      (counted in `overflows`), and only a step that is non-finite at a loss scale of 1 or less
      raises.
    """

    def __init__(
        self,
        optimizers: dict[str, Optimizer],
        device: torch.device,
        precision: Precision = "32",
        grad_clip: float | None = None,
        names: dict[str, str] | None = None,
    ) -> None:
        self.optimizers, self.grad_clip = optimizers, grad_clip
        self.names = {k: (names or {}).get(k, k) for k in optimizers}  # for messages
        self.device_type, self.dtype = device.type, autocast_dtype(precision, device)
        fp16 = self.dtype is torch.float16
        self.scalers = {k: torch.amp.GradScaler(device.type, enabled=fp16) for k in optimizers}
        self.overflows = 0
        # GradScaler's protocol: such an optimizer skips its step where `found_inf` is 1.
        self.on_device = {
            k: not fp16 and getattr(o, "_step_supports_amp_scaling", False)
            for k, o in optimizers.items()
        }
        self.skipped = {k: torch.zeros((), device=device) for k in optimizers}
        self.attempted = dict.fromkeys(optimizers, 0)  # updates asked for, per network (host)
        self.one = torch.ones((), device=device)

    def autocast(self) -> AbstractContextManager:
        """The context for forward passes and losses."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def loss_scale(self, name: str) -> float:
        """The factor by which `name`'s loss is scaled before backward (1 unless 16-mixed)."""
        scaler = self.scalers[name]
        return scaler.get_scale() if scaler.is_enabled() else 1.0

    def __call__(self, loss: Tensor, name: str, measure: bool = True) -> Tensor | None:
        """Update network `name` (an optimizer key); return the gradient norm before clipping, or
        None where `measure` is false and neither `grad_clip` nor the host-side check needs it."""
        optimizer, scaler = self.optimizers[name], self.scalers[name]
        if not loss.requires_grad:  # the whole network is frozen (model.freeze)
            return torch.zeros((), device=loss.device) if measure else None
        self.attempted[name] += 1
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        grads = [p.grad for p in params]
        norm = None
        if measure or self.grad_clip is not None or not self.on_device[name]:
            norm = total_norm(grads)
            if self.grad_clip is not None:
                torch.nn.utils.clip_grads_with_norm_(params, self.grad_clip, norm)
        if self.on_device[name]:
            found_inf = self._found_inf(loss.detach(), norm, grads)
            # a skipped first step leaves the state it makes unset (fused SGD's momentum)
            fresh = []
            if len(optimizer.state) < len(params):
                fresh = [p for p in params if not optimizer.state.get(p)]
            optimizer.found_inf, optimizer.grad_scale = found_inf, None
            try:
                optimizer.step()
            finally:
                del optimizer.found_inf, optimizer.grad_scale
            if fresh:
                _zero_if(found_inf.bool(), fresh, optimizer)
            self.skipped[name] += found_inf
            return norm
        if not (torch.isfinite(loss) and torch.isfinite(norm)):
            optimizer.zero_grad(set_to_none=True)
            scale = self.loss_scale(name)
            if scale <= 1.0:
                raise NonFiniteError(name, self.names[name], float(loss.detach()), float(norm))
            scaler.update(scale * scaler.get_backoff_factor())  # a loss-scale overflow
            self.overflows += 1
            return norm
        scaler.step(optimizer)
        scaler.update()
        return norm

    def _found_inf(self, loss: Tensor, norm: Tensor | None, grads: list[Tensor]) -> Tensor:
        """1.0 where the loss or a gradient is NaN or infinite, else 0.0 (x * 0 is NaN for those),
        from the norm when there is one, else with one multi-tensor kernel over the gradients
        (GradScaler's check, here with a scale of 1)."""
        if norm is not None:
            return (loss + norm).mul_(0.0).nan_to_num_(nan=1.0)
        found_inf = loss.float().mul(0.0).nan_to_num_(nan=1.0)
        if grads:
            torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, self.one)
        return found_inf

    def collect(self) -> dict[str, int]:
        """Updates skipped on the device since the last call, per network with any (a host
        sync: call it at logging steps)."""
        counts = torch.stack(list(self.skipped.values())).tolist()
        for count in self.skipped.values():
            count.zero_()
        return {k: int(n) for k, n in zip(self.skipped, counts, strict=True) if n}

    def state_dict(self) -> dict[str, Any]:
        return {"scalers": {k: s.state_dict() for k, s in self.scalers.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, scaler_state in state.get("scalers", {}).items():
            if name in self.scalers and scaler_state:
                self.scalers[name].load_state_dict(scaler_state)
