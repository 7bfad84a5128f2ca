"""The PixelCNN's sampler (the solver group's `autoregressive`): an image drawn sub-pixel by
sub-pixel, each value from the model's distribution given the values before it."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from genlab.losses import LEVELS, from_levels
from genlab.models.base import OneNetwork
from genlab.models.common import check_guidance, eval_mode, guidance_labels, guided


class Autoregressive:
    """Value after value in the model's order (a PixelCNN's sub-pixels), each drawn from the
    model's distribution given the values before, with classifier-free guidance scale `guidance`
    for a class-conditional model trained with label dropout: the log-probabilities of each
    value are `guided` (as LlamaGen and Parti guide their logits) and renormalized."""

    name = "autoregressive"

    def __init__(self, guidance: float = 1.0) -> None:
        self.guidance = check_guidance(guidance)

    def protocol(self) -> dict[str, Any]:
        """How the images were made, written beside every metric."""
        return {"sampler": self.name, "guidance": self.guidance}

    @torch.no_grad()
    def sample(
        self,
        model: OneNetwork,  # a PixelCNN: its network's row and column passes, `value_log_probs`
        z: Tensor,
        labels: Tensor | None = None,
        temperature: float = 1.0,
        start: Tensor | None = None,
        first_row: int = 0,
    ) -> Tensor:
        """Images in [-1, 1] for latents `z` (N, C*H*W), sub-pixel by sub-pixel from
        `first_row` (the rows above come from `start`). A sub-pixel takes the value where the
        CDF of its distribution (log-probabilities `guided` by `guidance` for a conditional
        model), raised to the power 1/`temperature` and renormalized, reaches Phi(z). The
        network's vertical stack runs once per row and its horizontal stack once per sub-pixel,
        at that pixel alone (`GatedPixelCNN.row_links`, `column_output`): exact, as its masks
        make the rest irrelevant."""
        if model.num_classes and labels is None:
            raise ValueError("a class-conditional PixelCNN needs labels to sample")
        guidance = self.guidance
        labels = guidance_labels(labels, model.num_classes, guidance)
        twice = labels is not None and len(labels) > len(z)

        def both(t: Tensor) -> Tensor:
            return torch.cat([t, t]) if twice else t

        c, s = model.shape["channels"], model.shape["image_size"]
        u = torch.special.ndtr(z.float()).view(len(z), c, s, s)
        x = torch.zeros_like(u) if start is None else start.float().clone()
        net = model.network
        bar = tqdm(total=(s - first_row) * s * c, desc="sub-pixels", leave=False, disable=None)
        with eval_mode(model), bar:
            rows = net.stack_rows(both(x))
            for i in range(s):
                links = net.row_links(both(x), labels, i, rows)
                if i < first_row:  # given: the vertical stack's rows only
                    continue
                inputs = net.column_inputs(links)
                for j in range(s):
                    for k in range(c):
                        out = net.column_output(both(x[:, :, i]), links, inputs, j)[:, :, k]
                        out = out.float()
                        log_p = model.value_log_probs(out)
                        if twice:
                            log_p = guided(*log_p.chunk(2), guidance)
                        cdf = torch.softmax(log_p / temperature, 1).cumsum(1)
                        level = torch.searchsorted(cdf, u[:, k, i, j, None].contiguous())
                        x[:, k, i, j] = from_levels(level[:, 0].clamp(max=LEVELS - 1))
                        bar.update()
        return x
