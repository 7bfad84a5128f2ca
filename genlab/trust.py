"""Configs read from files build only what genlab's own config tree names, unless the user trusts
more.

A checkpoint, a run folder or an exported generator can come from anyone, and Hydra's
`instantiate` calls whatever a `_target_` names: a chain such as
`torch.load(io.BytesIO(base64.b64decode(...)), weights_only=False)` runs a pickled payload. As
diffusers imports only from known libraries and transformers runs no repository code without
`trust_remote_code=True`, a config read from a file is checked before anything is built:

- its YAML is at most `MAX_BYTES` long and `MAX_DEPTH` levels deep, with no anchors or aliases (a
  few hundred bytes of nested aliases expand to billions of nodes) and no `${...}` interpolations
  (genlab writes its configs resolved);
- every `_target_` in it, at any depth, is one that genlab's config tree names in the same group
  (`conf/<group>/`: a stored `dataset` may name only genlab's data sets, a `model` or an export's
  `network` only genlab's models and networks, and so on), or is defined under a prefix in
  `GENLAB_TRUSTED_TARGETS` (comma-separated, e.g. `mypkg.models`), or the command says
  `trust_code=true` (everything: for runs you made yourself).

Trusting a prefix trusts every class and function defined under it, called with whatever
arguments the file holds: name your own package, never a library (`torch`, `os`, `builtins`). A
prefix never trusts genlab's own modules (`GENLAB_TRUSTED_TARGETS=genlab` adds nothing): their
functions write files, and the targets of genlab's that files may name are the config tree's.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from genlab import CONF_DIR
from genlab.errors import GenlabError

TRUSTED_ENV = "GENLAB_TRUSTED_TARGETS"
MAX_BYTES = 1 << 20
MAX_DEPTH = 32


class UntrustedConfigError(GenlabError):
    """A config read from a file that genlab will not build."""


# Targets that genlab moved, as configs written before the move name them.
MOVED = {
    "genlab.models.pixelcnn.GatedPixelCNN": "genlab.models.gated_pixelcnn.GatedPixelCNN",
    "genlab.solvers.Autoregressive": "genlab.models.autoregressive.Autoregressive",
    **{f"genlab.solvers.{s}": f"genlab.models.solvers.{s}" for s in ("DDPM", "DDIM", "DPMSolver")},
}


def read_config(text: Any, source: str) -> DictConfig:
    """The YAML mapping `text` (read from `source`) as a config, within the limits above."""
    if not isinstance(text, str):
        raise UntrustedConfigError(f"{source}: the stored config is not text")
    if len(text.encode()) > MAX_BYTES:
        raise UntrustedConfigError(
            f"{source}: the stored config is {len(text.encode())} bytes; a config read from a file "
            f"may hold at most {MAX_BYTES}"
        )
    depth = 0
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise UntrustedConfigError(
                    f"{source}: the stored config uses YAML anchors or aliases (& and *), which "
                    "genlab never writes and does not read from files"
                )
            if isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise UntrustedConfigError(
                        f"{source}: the stored config nests deeper than {MAX_DEPTH} levels"
                    )
            elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
                depth -= 1
        cfg = OmegaConf.create(text)
    except yaml.YAMLError as e:
        raise UntrustedConfigError(f"{source}: the stored config is not valid YAML ({e})") from None
    except GenlabError:
        raise
    except Exception as e:  # omegaconf's errors for keys or values it cannot hold
        raise UntrustedConfigError(f"{source}: the stored config cannot be read ({e})") from None
    if not isinstance(cfg, DictConfig):
        raise UntrustedConfigError(f"{source}: the stored config is not a mapping")
    for key, value in _walk(OmegaConf.to_container(cfg, resolve=False), ""):
        if isinstance(value, str) and "${" in value:
            raise UntrustedConfigError(
                f"{source}: {key} holds an interpolation ({value[:80]}); genlab writes configs "
                "resolved and does not resolve them from files"
            )
        if key.rpartition(".")[2] == "_target_" and value in MOVED:
            OmegaConf.update(cfg, key, MOVED[value])
    return cfg


def check_targets(node: Any, path: str, source: str, trust_code: bool = False) -> None:
    """Refuse a config of the group `path` (read from `source`) that names a `_target_` outside
    the group's allow-list, at any depth, before anything is built."""
    if trust_code:
        return
    container = OmegaConf.to_container(node, resolve=False) if OmegaConf.is_config(node) else node
    for key, value in _walk(container, path):
        if not key.endswith("._target_") and key != "_target_":
            continue
        if not (isinstance(value, str) and allowed(value, path)):
            raise UntrustedConfigError(
                f"{source}: {key} is {value!r}, which genlab does not build from a file. Configs "
                "in checkpoints, run folders and exports may name only the targets of genlab's "
                f"own config tree for their group ({_group_dir(path)}). If you made this run "
                f"yourself, trust its code: {TRUSTED_ENV}=PREFIX[,PREFIX...] (your package) or "
                "trust_code=true"
            )


def allowed(target: str, group: str | None = None) -> bool:
    """Whether configs of `group` (None: any) from files may build `target`: one of genlab's own
    config tree for that group, or an object defined under a prefix of `GENLAB_TRUSTED_TARGETS`
    (a name reached through a module that is not, such as `mypkg.os.system`, is not; nothing of
    genlab's own)."""
    if target in shipped_targets(group):
        return True
    for prefix in trusted_prefixes():
        if target == prefix or target.startswith(prefix + "."):
            return _defined_under(target, prefix)
    return False


def _defined_under(target: str, prefix: str) -> bool:
    from hydra.utils import get_object

    try:
        obj = get_object(target)  # imports a package the user trusts
    except Exception:
        return False
    module = getattr(obj, "__module__", None) or ""
    if module == "genlab" or module.startswith("genlab."):
        return False
    name = f"{module}.{getattr(obj, '__qualname__', '')}"
    return any(n == prefix or n.startswith(prefix + ".") for n in (module, name))


def trusted_prefixes() -> list[str]:
    return [p.strip().rstrip(".") for p in os.environ.get(TRUSTED_ENV, "").split(",") if p.strip()]


# Stored config nodes whose targets come from several folders of the config tree: a model holds
# its objective (conf/loss) and sampler (conf/solver); an export's network is a model's.
GROUP_DIRS = {g: ("model", "loss", "solver") for g in ("model", "network")}


def _group_dir(group: str) -> str:
    return " or ".join(f"conf/{d}/" for d in GROUP_DIRS.get(group, (group,)))


@functools.cache
def shipped_targets(group: str | None = None) -> frozenset[str]:
    """Every `_target_` named in genlab's config tree (Hydra's own settings aside), or in the
    folder of `group`."""
    targets: set[str] = set()
    folders = [CONF_DIR / d for d in GROUP_DIRS.get(group, (group,))] if group else [CONF_DIR]
    for path in (p for folder in folders for p in folder.rglob("*.yaml")):
        if "hydra" in path.relative_to(CONF_DIR).parts:
            continue
        data = yaml.safe_load(path.read_text())
        if isinstance(data, dict):
            data.pop("hydra", None)
        targets.update(v for k, v in _walk(data, "") if k.rpartition(".")[2] == "_target_")
    return frozenset(targets)


def _walk(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf and mapping entry below `node`."""
    if isinstance(node, dict):
        for key, value in node.items():
            full = f"{path}.{key}" if path else str(key)
            yield full, value
            yield from _walk(value, full)
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            full = f"{path}[{i}]"
            yield full, value
            yield from _walk(value, full)
