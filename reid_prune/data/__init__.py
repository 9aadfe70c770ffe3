"""Re-ID data: dataset parsers, a synthetic generator, the P x K sampler, transforms and loaders."""

from .cache import decode_images, should_cache
from .datasets import DATASET_KINDS, ReIDDataset, Sample, build_dataset
from .images import check_dataset_images, read_rgb
from .loaders import ImageDataset, SeededBatches, build_eval_loader, build_train_loader
from .sampler import PKSampler
from .synthetic import generate_synthetic
from .transforms import build_transforms

__all__ = [
    "DATASET_KINDS",
    "ImageDataset",
    "PKSampler",
    "ReIDDataset",
    "Sample",
    "SeededBatches",
    "build_dataset",
    "build_eval_loader",
    "build_train_loader",
    "build_transforms",
    "check_dataset_images",
    "decode_images",
    "generate_synthetic",
    "read_rgb",
    "should_cache",
]
