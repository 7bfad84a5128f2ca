"""Data sets decoded once to uint8 tensors, and a loader that batches them on the device."""

from genlab.data.datasets import (
    ImageData,
    cifar10,
    digits,
    fashion_mnist,
    image_folder,
    mnist,
    mnist5k,
)
from genlab.data.loader import DeviceLoader

__all__ = [
    "DeviceLoader",
    "ImageData",
    "cifar10",
    "digits",
    "fashion_mnist",
    "image_folder",
    "mnist",
    "mnist5k",
]
