"""Datasets (uint8 tensors in memory) and evaluation protocols."""

from flowkit.data.base import ImageSet, as_uint8_images, default_data_root, resize_uint8, to_float
from flowkit.data.files import find_images, folder, load_images
from flowkit.data.protocols import Split, leave_one_class_out, out_of_distribution
from flowkit.data.sources import cifar10, digits, fake, mnist, svhn

__all__ = [
    "ImageSet",
    "Split",
    "as_uint8_images",
    "default_data_root",
    "resize_uint8",
    "to_float",
    "find_images",
    "folder",
    "load_images",
    "digits",
    "mnist",
    "cifar10",
    "svhn",
    "fake",
    "leave_one_class_out",
    "out_of_distribution",
]
