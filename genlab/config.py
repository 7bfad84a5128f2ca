"""Config checking and instantiation.

Every config node with a `_target_` is checked against the signature of its target before any
work starts: unknown keys and values of the wrong type are refused with the full key in the
message. Range checks live in the constructors themselves (they raise `ValueError`), and `build`
turns those into a `ConfigError` naming the config group.
"""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from genlab.errors import ConfigError, GenlabError
from genlab.trust import read_config

# Installed wheels carry the config tree inside the package; a source checkout keeps it at the top.
_PACKAGED_CONF = Path(__file__).parent / "conf"
CONF_DIR = (
    _PACKAGED_CONF if _PACKAGED_CONF.is_dir() else Path(__file__).parents[1] / "conf"
).resolve()


def choice(group: str) -> str:
    """The option selected for a config group (`model` -> `dcgan`), when run through Hydra."""
    if HydraConfig.initialized():
        value = HydraConfig.get().runtime.choices.get(group)
        if value is not None:
            return str(value)
    return "?"


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if hint is type(None):
        return "null"
    if origin is not None:
        return f"a list of {_describe(args[0])}" if args else "a list"
    return getattr(hint, "__name__", str(hint))


def _matches(value: Any, hint: Any) -> bool:
    """Whether a config value fits a type hint (unknown hints are accepted)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, list | tuple | ListConfig):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(map(_matches, value, args))
        return not args or all(_matches(v, args[0]) for v in value)
    return True


def _hints(target: Any) -> dict[str, Any]:
    fn = target.__init__ if inspect.isclass(target) else target
    try:
        return typing.get_type_hints(fn)
    except Exception:  # third-party annotations that do not evaluate: skip type checks
        return {}


def check_node(node: DictConfig, path: str) -> None:
    """Refuse unknown keys and wrongly typed values in a `_target_` node and its children."""
    target_name = node.get("_target_")
    try:
        target = get_object(target_name)
    except Exception as e:
        raise ConfigError(f"{path}._target_: cannot import '{target_name}' ({e})") from None
    params = inspect.signature(target).parameters
    open_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    hints = _hints(target)
    for key in node:
        if key.startswith("_") and key.endswith("_"):
            continue
        full = f"{path}.{key}"
        if key not in params and not open_kwargs:
            allowed = ", ".join(k for k, p in params.items() if p.kind is p.POSITIONAL_OR_KEYWORD)
            raise ConfigError(f"{full}: unknown key for {target_name}; allowed keys: {allowed}")
        try:
            value = node[key]  # resolves interpolations
        except MissingMandatoryValue:
            raise ConfigError(f"{full} is required: set {full}=...") from None
        except OmegaConfBaseException as e:
            raise ConfigError(f"{full}: {e}") from None
        if isinstance(value, DictConfig):
            if "_target_" in value:
                check_node(value, full)
            continue
        if isinstance(value, ListConfig):
            value = OmegaConf.to_container(value, resolve=True)
        if key in hints and not _matches(value, hints[key]):
            raise ConfigError(
                f"{full}: expected {_describe(hints[key])}, got {value!r} ({type(value).__name__})"
            )


def check_config(cfg: DictConfig, groups: collections.abc.Iterable[str]) -> None:
    """Check each group's node before anything is built."""
    for group in groups:
        node = cfg.get(group)
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise ConfigError(f"config group '{group}' is missing or has no _target_")
        check_node(node, group)


def build(node: DictConfig, group: str, **kwargs: Any) -> Any:
    """Instantiate a node; a constructor's `ValueError`, `TypeError` or `AssertionError` (a
    library's check of its settings, such as diffusers') becomes a `ConfigError`."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, GenlabError):
            raise cause from None
        if isinstance(cause, ValueError | TypeError | AssertionError):
            raise ConfigError(_name_key(node, group, str(cause))) from cause
        raise


def solver_group(cfg: DictConfig) -> tuple[str, ...]:
    """("solver",) when the config holds a solver (a diffusion or PixelCNN run's, or one an
    eval, sample or export command line chose), else () (also for settings of the run's own
    solver alone, such as `solver.guidance=2`, which `load_run` checks once merged onto the
    run's)."""
    solver = cfg.get("solver")
    return ("solver",) if isinstance(solver, DictConfig) and "_target_" in solver else ()


def _check_takes_solver(cfg: DictConfig) -> None:
    if "solver" not in inspect.signature(get_object(cfg.model._target_)).parameters:
        raise ConfigError(
            f"solver={choice('solver')} is for diffusion and autoregressive models; "
            f"model={choice('model')} ({cfg.model._target_}) samples without one"
        )


def model_node(cfg: DictConfig) -> DictConfig:
    """The node that builds a run's model: `model`, with the run's `solver` (a group of its own,
    which eval and sample may choose anew) inside for a model with one (diffusion, PixelCNN)."""
    if cfg.get("solver") is None:
        return cfg.model
    _check_takes_solver(cfg)
    node = cfg.model.copy()
    with open_dict(node):
        node.solver = cfg.solver
    return node


def build_model(cfg: DictConfig, data: Any) -> Any:
    """The model a run config names (`model_node`), shaped for a data set (channels, image
    size, classes)."""
    shape = {
        "channels": data.channels,
        "image_size": data.image_size,
        "num_classes": data.num_classes,
    }
    if cfg.get("solver") is not None:  # built alone: its messages name solver.*
        _check_takes_solver(cfg)
        shape["solver"] = build(cfg.solver, "solver")
    return build(cfg.model, "model", **shape)


def _find_key(node: DictConfig, key: str, path: str) -> str | None:
    """The full path of the first `key` in a node and its children."""
    if key in node:
        return f"{path}.{key}"
    for name in node:
        child = node._get_node(name)
        if isinstance(child, DictConfig):
            found = _find_key(child, key, f"{path}.{name}")
            if found:
                return found
    return None


def _name_key(node: DictConfig, group: str, message: str) -> str:
    """'lr must be > 0' -> 'optimizer.lr must be > 0 (optimizer=adam)' when `lr` is a config key."""
    first, _, rest = message.partition(" ")
    path = _find_key(node, first, group) if rest else None
    chosen = choice(group)  # "?" for a node read from a run, not chosen on this command line
    named = group if chosen == "?" else f"{group}={chosen}"
    return f"{path} {rest} ({named})" if path else f"{named}: {message}"


# What a checkpoint means: resuming with other values here is refused unless forced.
MEANING = ("model", "loss", "dataset", "optimizer.impl._target_")
NOT_MEANING = ("dataset.root", "dataset.download")


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: node}


def saved_config(state: dict[str, Any], source: str) -> DictConfig:
    """The run config a checkpoint (read from `source`) holds, in today's layout, read within
    `trust.read_config`'s limits. Runs written before the VAE took its networks from config kept
    the convolutional networks' `features` and `hidden` on the model node itself: they become
    `model.encoder` and `model.decoder` (`model=vae`)."""
    if "config" not in state:
        raise GenlabError(f"{source} holds no run config; it was not written by genlab train")
    cfg = read_config(state["config"], source)
    model = cfg.get("model")
    if (
        isinstance(model, DictConfig)
        and model.get("_target_") == "genlab.models.VAE"
        and ("encoder" not in model)
    ):
        sizes = {k: model.pop(k) for k in ("features", "hidden") if k in model}
        for part, net in (("encoder", "ConvEncoder"), ("decoder", "ConvDecoder")):
            model[part] = {"_target_": f"genlab.models.vae.{net}", "_partial_": True, **sizes}
    return cfg


def meaning_changes(saved: DictConfig, current: DictConfig) -> list[str]:
    """`key: old -> new` for each key that changes what a checkpoint means."""
    old, new = (_flat(OmegaConf.to_container(c, resolve=True)) for c in (saved, current))
    keys = {
        k
        for k in old.keys() | new.keys()
        if any(k == m or k.startswith(m + ".") for m in MEANING) and k not in NOT_MEANING
    }
    return [
        f"{k}: {old.get(k, '<absent>')} -> {new.get(k, '<absent>')}"
        for k in sorted(keys)
        if old.get(k, "<absent>") != new.get(k, "<absent>")
    ]


def required(cfg: DictConfig, key: str, usage: str) -> Any:
    """A command's mandatory top-level value (`run=...`), or one message saying how to give it."""
    value = OmegaConf.select(cfg, key, throw_on_missing=False, default=None)
    if value is None or OmegaConf.is_missing(cfg, key) or value == "":
        raise ConfigError(f"{key} is required: {usage}")
    return value
