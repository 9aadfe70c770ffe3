"""Re-ID data: dataset parsers, a synthetic generator, the P x K sampler, transforms and loaders."""

from .cache import decode_images, should_cache
from .datasets import DATASET_KINDS, ReIDDataset, Sample, build_dataset
from .loaders import ImageDataset, build_eval_loader, build_train_loader
from .sampler import PKSampler
from .synthetic import generate_synthetic
from .transforms import build_transforms

__all__ = [
    "DATASET_KINDS",
    "ImageDataset",
    "PKSampler",
    "ReIDDataset",
    "Sample",
    "build_dataset",
    "build_eval_loader",
    "build_train_loader",
    "build_transforms",
    "decode_images",
    "generate_synthetic",
    "should_cache",
]
