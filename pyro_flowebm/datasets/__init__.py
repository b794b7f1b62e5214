"""Data sets: 2-D toys with exact samplers, user data from files, and quantized images."""

from .files import load, load_file, npy_shape, validate_data
from .images import IMAGE_SETS, ImageSet, check_levels, dequantize, load_images
from .toys import TOYS, Toy, eight_gaussians, eight_gaussians_modes

__all__ = [
    "IMAGE_SETS",
    "TOYS",
    "ImageSet",
    "Toy",
    "check_levels",
    "dequantize",
    "eight_gaussians",
    "eight_gaussians_modes",
    "load",
    "load_file",
    "load_images",
    "npy_shape",
    "validate_data",
]
