"""Inception-v3 features as in the original FID (torch-fidelity's port of the TF graph).

The weights are read from a local file whose sha256 must start with torch-fidelity's published
prefix. When the file is absent, torch-fidelity's release URL is tried, which fails offline with
a clear message.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from genlab.errors import DataUnavailableError, GenlabError
from genlab.metrics.classifier import sha256

log = logging.getLogger(__name__)

WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{WEIGHTS_FILE}"
SHA256_PREFIX = "6726825d"
RESIZE = "bilinear to 299x299 as in TF1 (torch-fidelity), grey repeated to RGB"


def inception_weights(path: str | Path | None, cache_dir: str | Path) -> tuple[Path, str]:
    """The weights file (downloaded into `cache_dir` if no path is given and it is missing) and
    its sha256, checked against the published prefix."""
    file = Path(path).expanduser() if path else Path(cache_dir).expanduser() / WEIGHTS_FILE
    if not file.is_file():
        if path:
            raise DataUnavailableError(f"evaluator.inception_weights={file} does not exist")
        file.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(WEIGHTS_URL, str(file), hash_prefix=SHA256_PREFIX)
        except Exception as e:
            raise DataUnavailableError(
                f"the FID Inception weights are not in {file.parent} and downloading them failed "
                f"({e}). Fetch {WEIGHTS_URL} on a machine with internet access and pass "
                "evaluator.inception_weights=PATH, or use evaluator.extractor=classifier."
            ) from None
    digest = sha256(file)
    if not digest.startswith(SHA256_PREFIX):
        raise GenlabError(
            f"{file} is not torch-fidelity's FID Inception weights (sha256 {digest[:12]}..., "
            f"expected {SHA256_PREFIX}...)"
        )
    return file, digest


class InceptionFeatures(nn.Module):
    """2048-d pool features of FID's Inception-v3 for uint8 images of any size."""

    def __init__(self, weights: Path) -> None:
        super().__init__()
        try:
            import torch_fidelity.feature_extractor_inceptionv3 as fidelity
        except ImportError:
            raise GenlabError(
                "evaluator.extractor=inception needs torch-fidelity: "
                "pip install 'genlab[inception]'"
            ) from None
        from torchmetrics.image.fid import NoTrainInceptionV3

        # torch-fidelity unpickles a weights path with weights_only=False; load the tensors
        # safely here and hand them over through its download hook instead.
        state = torch.load(weights, map_location="cpu", weights_only=True)
        original = fidelity.load_state_dict_from_url
        fidelity.load_state_dict_from_url = lambda *args, **kwargs: state
        try:
            self.net = NoTrainInceptionV3("inception-v3-compat", ["2048"], None, antialias=False)
        finally:
            fidelity.load_state_dict_from_url = original

    def forward(self, images: Tensor) -> Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return self.net(images)
