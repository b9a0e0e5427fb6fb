"""Datasets (uint8 tensors in memory) and evaluation protocols."""

from flowkit.data.base import (
    ImageSet,
    as_uint8_images,
    check_split,
    default_data_root,
    resize_uint8,
    to_float,
)
from flowkit.data.files import (
    decode_image,
    detect_layout,
    find_images,
    folder,
    load_images,
    mvtec,
    mvtec_categories,
)
from flowkit.data.protocols import (
    Split,
    labelled_split,
    leave_one_class_out,
    one_class,
    out_of_distribution,
)
from flowkit.data.sources import cifar10, digits, fake, mnist, svhn

__all__ = [
    "ImageSet",
    "Split",
    "as_uint8_images",
    "check_split",
    "default_data_root",
    "resize_uint8",
    "to_float",
    "find_images",
    "decode_image",
    "detect_layout",
    "folder",
    "load_images",
    "mvtec",
    "mvtec_categories",
    "labelled_split",
    "digits",
    "mnist",
    "cifar10",
    "svhn",
    "fake",
    "leave_one_class_out",
    "one_class",
    "out_of_distribution",
]
