"""Start from another run's weights (`model.init_from`); freeze named parts (`model.freeze`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from torch import Tensor, nn

from genlab.checkpoint import find_resume, load_checkpoint
from genlab.errors import GenlabError

log = logging.getLogger(__name__)


Weights = dict[str, Tensor]


def init_from(
    model: nn.Module, path: str, choose: Callable[[Weights], Weights] = dict
) -> dict[str, object]:
    """Copy every weight of the checkpoint (or run folder's last checkpoint) at `path` whose
    name and shape match, from the model state `choose` makes of it (the family's
    `starting_weights`); return where they came from. Layers that differ (another image size or
    class count) keep their fresh initialisation and are listed in the log."""
    ckpt = find_resume(str(path), Path(path), key="model.init_from")
    source = choose(load_checkpoint(ckpt)["model"])
    own = model.state_dict()
    matching = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
    if not matching:
        raise GenlabError(f"model.init_from={ckpt}: no weight fits this model")
    model.load_state_dict(matching, strict=False)
    skipped = sorted(k for k in own if k not in matching)
    log.info(
        "Initialised %d tensors from %s; kept fresh: %s", len(matching), ckpt, skipped or "none"
    )
    return {"checkpoint": str(ckpt), "tensors": len(matching), "fresh": skipped}


def freeze(model: nn.Module, names: Sequence[str]) -> None:
    """Stop training the named sub-modules (`generator`, `discriminator.net.0`, `encoder`, ...)."""
    for name in names:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            parts = ", ".join(n for n, _ in model.named_children())
            raise ValueError(
                f"freeze: {name!r} is not a part of this model; parts: {parts}"
            ) from None
        module.requires_grad_(False)
