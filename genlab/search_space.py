"""The search space of genlab's Optuna search (`genlab.search`): Optuna's distributions from
Hydra's sweep syntax, the overrides that give a run a trial's parameters, and the study's sampler
and pruner from their configs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from genlab.errors import ConfigError

if TYPE_CHECKING:
    import optuna


def search_space(
    params: Mapping[str, str], arguments: list[str]
) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """Optuna's distributions of the sweep's parameters (`hydra.sweeper.params` and command-line
    overrides in sweep syntax), the override key of each (with its + or ++), and the fixed
    overrides every trial gets. choice(a, b) and a,b: categorical; interval(lo, hi): uniform,
    int(interval(lo, hi)) on the integers, tag(log, interval(...)): log-uniform; range(a, b, s):
    the integers (or floats) from a up to b, b excluded."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    lines = [f"{key}={value}" for key, value in params.items()] + list(arguments)
    space: dict[str, Any] = {}
    keys: dict[str, str] = {}
    fixed: list[str] = []
    for override in parser.parse_overrides(lines):
        if override.is_sweep_override():
            name = override.key_or_group
            space[name], keys[name] = _distribution(override), override.get_key_element()
        else:
            fixed.append(override.input_line)
    if not space:
        raise ConfigError(
            "hydra.sweeper.params is empty: name what to search, for example "
            "hydra.sweeper.params.optimizer.lr='tag(log, interval(1e-5, 1e-3))'"
        )
    return space, keys, [f for f in fixed if f.partition("=")[0].lstrip("+~") not in space]


def _distribution(override: Any) -> Any:
    from hydra.core.override_parser.types import IntervalSweep, RangeSweep, Transformer
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    sweep = override.value()
    if override.is_choice_sweep() or (isinstance(sweep, RangeSweep) and sweep.shuffle):
        choices = override.sweep_iterator(transformer=Transformer.encode)
        return CategoricalDistribution(list(choices))
    if isinstance(sweep, RangeSweep):
        values = list(override.sweep_iterator())
        if not values:
            raise ConfigError(f"{override.input_line}: the range holds no value")
        if all(isinstance(v, int) for v in values):
            return IntDistribution(values[0], values[-1], step=int(sweep.step))
        return FloatDistribution(values[0], values[-1], step=float(sweep.step))
    if isinstance(sweep, IntervalSweep):
        log_scale = "log" in sweep.tags
        if isinstance(sweep.start, int) and isinstance(sweep.end, int):
            return IntDistribution(sweep.start, sweep.end, log=log_scale)
        return FloatDistribution(float(sweep.start), float(sweep.end), log=log_scale)
    raise ConfigError(f"{override.input_line}: Optuna searches choice, range and interval only")


def trial_overrides(trial: optuna.Trial, space: Mapping[str, Any], keys: Mapping[str, str]):
    """The overrides that give a run the trial's parameters."""
    return [f"{keys[name]}={_encode(trial.params[name])}" for name in space]


def _encode(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def build(cfg: Any, what: str, **given: Any) -> Any:
    """An Optuna sampler or pruner from its config (`_target_` and arguments), or None."""
    if not cfg:
        return None
    from hydra.utils import instantiate

    target = str(cfg.get("_target_", ""))
    if not target.startswith("optuna."):
        raise ConfigError(f"hydra.sweeper.{what}._target_ must be one of Optuna's, got {target!r}")
    return instantiate(cfg, **given)


def sampler(cfg: Any, space: Mapping[str, Any], worker: int) -> Any:
    """The sampler; GridSampler's search space is the choices of `space` where not given. A
    seeded sampler draws from seed + `worker`, so that workers never repeat each other's draws
    and the first (a search of one worker) draws from the seed as given."""
    seed = {"seed": cfg.seed + worker} if cfg and cfg.get("seed") is not None else {}
    if (
        cfg
        and str(cfg.get("_target_")) == "optuna.samplers.GridSampler"
        and not cfg.get("search_space")
    ):
        from hydra.utils import instantiate
        from optuna.distributions import CategoricalDistribution

        loose = [name for name, d in space.items() if not isinstance(d, CategoricalDistribution)]
        if loose:
            raise ConfigError(
                f"GridSampler needs choices: {', '.join(loose)} "
                "are ranges or intervals; write them as choice(...)"
            )
        return instantiate(cfg, search_space={k: list(d.choices) for k, d in space.items()}, **seed)
    return build(cfg, "sampler", **seed)
