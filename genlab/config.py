"""Config checking and instantiation.

Every config node with a `_target_` is checked against the signature of its target before any
work starts: unknown keys and values of the wrong type are refused with the full key in the
message. Range checks live in the constructors themselves (they raise `ValueError`), and `build`
turns those into a `ConfigError` naming the config group.
"""

from __future__ import annotations

import collections.abc
import difflib
import inspect
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from genlab import CONF_DIR
from genlab.errors import ConfigError, GenlabError
from genlab.trust import read_config


def choice(group: str) -> str:
    """The option selected for a config group (`model` -> `dcgan`), when run through Hydra."""
    if HydraConfig.initialized():
        value = HydraConfig.get().runtime.choices.get(group)
        if value is not None:
            return str(value)
    return "?"


def named(group: str, otherwise: str | None = None) -> str:
    """`model=dcgan` when run through Hydra, else `otherwise` (or the group's name)."""
    chosen = choice(group)
    return f"{group}={chosen}" if chosen != "?" else otherwise or group


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
        shown = user_key(full)  # as the command line sets it
        if key not in params and not open_kwargs:
            keys = [k for k, p in params.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
            near = difflib.get_close_matches(key, keys, n=2, cutoff=0.8)
            hint = f"did you mean {' or '.join(near)}? " if near else ""
            raise ConfigError(
                f"{shown}: unknown key for {target_name}; {hint}allowed keys: {', '.join(keys)}"
            )
        try:
            value = node[key]  # resolves interpolations
        except MissingMandatoryValue:
            raise ConfigError(f"{shown} is required: set {shown}=...") from None
        except OmegaConfBaseException as e:
            raise ConfigError(f"{shown}: {e}") from None
        if isinstance(value, DictConfig):
            if "_target_" in value:
                check_node(value, full)
                if key in hints:
                    _check_kind(value._target_, hints[key], shown, target_name)
            continue
        if isinstance(value, ListConfig):
            value = OmegaConf.to_container(value, resolve=True)
        if key in hints and not _matches(value, hints[key]):
            raise ConfigError(
                f"{shown}: expected {_describe(hints[key])}, got {value!r} ({type(value).__name__})"
            )


def _is_kind(target: Any, hint: Any) -> bool:
    """Whether a built object of class `target` fits a type hint naming classes (a loss class
    for `objective`); hints of other kinds (a network's `Callable`) are not checked here."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        return any(_is_kind(target, a) for a in typing.get_args(hint))
    if hint is type(None):
        return False
    if not inspect.isclass(hint):  # Callable, Any: nothing to check here
        return True
    return inspect.isclass(target) and issubclass(target, hint)


def _check_kind(target_name: str, hint: Any, key: str, owner: str) -> None:
    """Refuse a node (`key`, as the command line sets it) whose target is not of the class its
    parameter in `owner` names: `loss=elbo` for a GAN (`objective: AdversarialLoss`), saying
    which options of its config group fit."""
    if _is_kind(get_object(target_name), hint):
        return
    group = key.partition(".")[0]
    options = sorted((CONF_DIR / group).glob("*.yaml")) if key == group else []
    fitting = [p.stem for p in options if (t := _yaml_target(p)) and _is_kind(get_object(t), hint)]
    allowed = f"; it takes {group}={' | '.join(fitting)}" if fitting else ""
    shown = named(group) if key == group else key
    raise ConfigError(f"{shown} ({target_name}) does not fit {named('model', owner)}{allowed}")


def _yaml_target(path: Path) -> str | None:
    data = yaml.safe_load(path.read_text())
    return data.get("_target_") if isinstance(data, dict) else None


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


# Config groups that choose a part of the model node: `loss=hinge` its objective, `solver=ddim`
# its sampler. A family's yaml names the parts it takes (`objective: ${loss}`); `fold` moves
# them in.
MODEL_PARTS = {"loss": "objective", "solver": "sampler"}


def fold(cfg: DictConfig, stored: bool = False) -> DictConfig:
    """A copy of a composed run config with the model's parts inside the model node: the
    top-level `loss` and `solver` become `model.objective` and `model.sampler` and leave the
    top level, so that a run config says each once. A part for a model whose yaml names none (a
    solver for a GAN) is refused, naming the group. A config `stored` by an earlier genlab
    (before the model held its parts) is folded as it is: its model node is checked later."""
    cfg = cfg.copy()
    with open_dict(cfg):
        for group, part in MODEL_PARTS.items():
            if group not in cfg:
                continue
            node = cfg[group]
            if node is not None:
                if not stored and part not in cfg.model:
                    target = cfg.model.get("_target_")
                    raise ConfigError(
                        f"{named(group)} does not fit {named('model', target)}: {target} takes "
                        f"no {part} (model.{part}); the models whose yaml names one do"
                    )
                cfg.model[part] = OmegaConf.to_container(node, resolve=True)
            del cfg[group]
    return cfg


def user_key(path: str) -> str:
    """A key as the command line sets it: `model.objective.r1` -> `loss.r1`."""
    for group, part in MODEL_PARTS.items():
        if path == f"model.{part}" or path.startswith(f"model.{part}."):
            return group + path.removeprefix(f"model.{part}")
    return path


def check_condition(cfg: DictConfig) -> None:
    """Refuse a `condition` (a degradation of the data set's images) for a model whose family
    does not generate from an image (`Family.conditions`), before anything is built. (A family
    that generates from an image refuses to be built without one.)"""
    family = get_object(cfg.model._target_)
    takes = getattr(family, "conditions", {"image"})
    if cfg.get("condition") is None or "image" in takes:
        return
    raise ConfigError(
        f"{named('condition')} does not fit {named('model', cfg.model._target_)}: "
        f"{family.__name__} does not generate from an image; it generates from "
        f"{' or '.join(sorted(takes))}"
    )


def degradation(cfg: DictConfig, channels: int, image_size: int) -> Any:
    """The run's degradation (`condition`), checked against the data set's shape, or None."""
    if cfg.get("condition") is None:
        return None
    degrade = build(cfg.condition, "condition")
    try:
        degrade.check(channels, image_size)
    except ValueError as e:
        raise ConfigError(f"{named('condition')}: {e}") from None
    return degrade


def build_model(cfg: DictConfig, data: Any) -> Any:
    """The model a (folded) run config names, with its objective and sampler, shaped for a data
    set (channels, image size, classes) and, for one that generates from an image, for the
    conditions its degradation makes."""
    shape = {
        "channels": data.channels,
        "image_size": data.image_size,
        "num_classes": data.num_classes,
    }
    check_condition(cfg)
    degrade = degradation(cfg, data.channels, data.image_size)
    if degrade is not None:
        shape["condition_shape"] = list(degrade.shape(data.channels, data.image_size))
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
    if path:  # a key of the model's objective or sampler: named as the command line sets it
        path = user_key(path)
        group = path.partition(".")[0]
    label = named(group)  # the group alone for a node read from a run
    return f"{path} {rest} ({label})" if path else f"{label}: {message}"


# What a checkpoint means: resuming with other values here is refused unless forced.
MEANING = ("model", "dataset", "condition", "optimizer.impl._target_")
NOT_MEANING = ("dataset.root", "dataset.download", "model.sampler")


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
    return fold(cfg, stored=True)  # runs from before the model held its objective and sampler


def _within(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def meaning_changes(saved: DictConfig, current: DictConfig) -> list[str]:
    """`key: old -> new` for each key that changes what a checkpoint means."""
    old, new = (_flat(OmegaConf.to_container(c, resolve=True)) for c in (saved, current))
    keys = {
        k for k in old.keys() | new.keys() if _within(k, MEANING) and not _within(k, NOT_MEANING)
    }
    return [
        f"{user_key(k)}: {old.get(k, '<absent>')} -> {new.get(k, '<absent>')}"
        for k in sorted(keys)
        if old.get(k, "<absent>") != new.get(k, "<absent>")
    ]


def required(cfg: DictConfig, key: str, usage: str) -> Any:
    """A command's mandatory top-level value (`run=...`), or one message saying how to give it."""
    value = OmegaConf.select(cfg, key, throw_on_missing=False, default=None)
    if value is None or OmegaConf.is_missing(cfg, key) or value == "":
        raise ConfigError(f"{key} is required: {usage}")
    return value
