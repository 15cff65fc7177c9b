"""Data: datasets under a data root, paired sampling and mixing, batched augmentation, batch sources."""

from .augment import BatchAugment, rrc_params, resized_crop
from .datasets import DATASETS, ImageArrays, data_root, dataset_info, image_folder, load_arrays
from .pairs import ClassIndex, PairedDataset, draw_partners, mix, mix_seed, route, sample_lambda
from .sources import LoaderPairSource, TensorPairSource, build_source

__all__ = ["BatchAugment", "rrc_params", "resized_crop", "DATASETS", "ImageArrays", "data_root", "dataset_info",
           "image_folder", "load_arrays", "ClassIndex", "PairedDataset", "draw_partners", "mix", "mix_seed",
           "route", "sample_lambda", "LoaderPairSource", "TensorPairSource", "build_source"]
