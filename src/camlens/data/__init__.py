"""Data sources -> uint8 tensors, decoded once and cached on disk.

`load_dataset(source)` takes what the CLI's `--data` takes:
  - `cifar10`: the official `cifar-10-python.tar.gz` in `$CAMLENS_HOME` (default
    ~/.cache/camlens), downloaded and md5-checked there when absent, read without extracting;
  - a folder holding `cifar-10-batches-py/` (or that folder itself), or the official
    `cifar-10-python.tar.gz`;
  - an image-folder tree `ROOT/{train,test}/<class>/*.png|jpg|jpeg` or a `.tar.gz` of one;
  - `sample`: the 1,000 test images bundled with camlens (100 per class, no train split), or
    any sample file written by `save_sample`.
The decoded pixels are cached under `$CAMLENS_HOME/cache`, keyed by the source's checksum and
the image size, so the second load of 60,000 images reads two .npy files.

    load.py        load_dataset: resolve a source, read it (archives in memory), through the cache
    sources.py     the readers: official batches, image folders, archive listings; DataError
    cache.py       the decoded-pixel cache and the fingerprints that key it
    dataset.py     Split, Dataset          sample.py  the bundled sample file
    transforms.py  batched augmentation, channel statistics, balanced subsets
    adapt.py       the user's own data (DataLoader, torch Dataset, arrays) -> [0, 1] batches
"""

from camlens.data.adapt import (
    UserData,
    as_dataset,
    dataset_normalization,
    from_user_data,
    read_normalization,
)
from camlens.data.dataset import Dataset, Split
from camlens.data.load import load_dataset
from camlens.data.sample import SAMPLE_PATH, save_sample
from camlens.data.sources import DataError
from camlens.data.transforms import augment, balanced_subset, channel_stats
from camlens.download import default_home

__all__ = [
    "DataError",
    "Dataset",
    "Split",
    "load_dataset",
    "augment",
    "balanced_subset",
    "channel_stats",
    "default_home",
    "save_sample",
    "SAMPLE_PATH",
    "UserData",
    "as_dataset",
    "dataset_normalization",
    "from_user_data",
    "read_normalization",
]
