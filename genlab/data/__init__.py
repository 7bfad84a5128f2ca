"""Data sets decoded once to uint8 tensors, and a loader that batches them on the device."""

from genlab.data.datasets import (
    ImageData,
    ImageFiles,
    cifar10,
    digits,
    fashion_mnist,
    image_folder,
    mnist,
    mnist5k,
)
from genlab.data.loader import DeviceLoader, StreamLoader
from genlab.data.photos import photos

__all__ = [
    "DeviceLoader",
    "ImageFiles",
    "StreamLoader",
    "ImageData",
    "cifar10",
    "digits",
    "fashion_mnist",
    "image_folder",
    "mnist",
    "mnist5k",
    "photos",
]
