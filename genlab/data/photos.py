"""`photos`: scikit-learn's two sample photographs cut into tiles, an offline colour data set for
super-resolution and restoration."""

from __future__ import annotations

import torch

from genlab.data.datasets import ImageData, Split, _check_size, _check_split
from genlab.errors import require_at_least
from genlab.images import tiles

PHOTO_TEST_FRACTION = 0.2  # of each photograph's width, in its middle: a strip 128 px wide


def photos(
    image_size: int = 32, split: Split = "train", stride: int = 16, test_size: int = 128
) -> ImageData:
    """scikit-learn's two sample photographs (china.jpg, flower.jpg: 640 x 427 RGB) as tiles, an
    offline colour set for super-resolution and restoration (unlabelled). The parts left and
    right of the middle PHOTO_TEST_FRACTION of each photograph's width are `train`, a tile of
    image_size every `stride` pixels. The middle strip (the pagoda, the flower) is `test`, in
    tiles of `test_size` (by default the strip's width: whole images, as the SR papers measure,
    since a mean of PSNRs over small tiles is ruled by the flat ones)."""
    _check_size(image_size)
    _check_size(test_size)
    _check_split(split)
    require_at_least(1, stride=stride)
    from sklearn.datasets import load_sample_images

    key, size, every = ("test_size", test_size, test_size)
    if split == "train":
        key, size, every = ("image_size", image_size, stride)
    parts = []
    for photo in load_sample_images().images:
        image = torch.from_numpy(photo.copy()).permute(2, 0, 1)
        width = image.shape[-1]
        left = round(width * (1 - PHOTO_TEST_FRACTION) / 2)
        right = left + round(width * PHOTO_TEST_FRACTION)
        middle = [image[..., left:right]]
        for region in middle if split == "test" else [image[..., :left], image[..., right:]]:
            if size > min(region.shape[-2:]):
                raise ValueError(
                    f"dataset.{key}={size} is larger than a part of the photographs' {split} "
                    f"split ({region.shape[-1]} x {region.shape[-2]} px): choose at most "
                    f"{min(region.shape[-2:])}"
                )
            parts.append(tiles(region, size, every))
    return ImageData("photos", torch.cat(parts).contiguous(), None, None, split)
