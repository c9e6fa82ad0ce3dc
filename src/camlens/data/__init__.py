"""Data sources -> uint8 images that stream: indexed, decoded per batch, never held whole.

`load_dataset(source)` takes what the CLI's `--data` takes:
  - `cifar10`: the official `cifar-10-python.tar.gz` in `$CAMLENS_HOME` (default
    ~/.cache/camlens), downloaded and md5-checked there when absent;
  - a folder holding `cifar-10-batches-py/` (or that folder itself), or the official
    `cifar-10-python.tar.gz`;
  - an image folder: `ROOT/{test,val}/<class>/*` (train/ beside them only to train), or class
    folders at the top level (`ROOT/<class>/*`), or a tar (.tar, .tar.gz) of one;
  - `sample`: the 1,000 test images bundled with camlens (100 per class, no train split), or
    any sample file written by `save_sample`.
An image folder is indexed (paths, labels; a tar's member offsets) and its images are an
`ImageStore`: indexing it decodes the rows asked for, a whole pass decodes batch by batch in
DataLoader workers, so memory does not grow with the number of images. Each photo is made
the model's input as it was evaluated: short side resized, centre crop (`Preprocess`).

    load.py        load_dataset: resolve a source, index it (or read the CIFAR batches)
    index.py       image folders and tars -> names, labels, offsets; unreadable files left out
    decode.py      Preprocess; one photo (any mode, EXIF-rotated) -> the cropped uint8 pixels
    store.py       ImageStore: FileImages (decoded per row), MappedImages (memory-mapped rows)
    names.py       class names from a .txt or .json file (ImageNet's wnid -> name)
    sources.py     the official CIFAR batches; DataError
    cache.py       the CIFAR pixel cache (memory-mapped) and the folder fingerprints
    dataset.py     Split, Dataset          sample.py  the bundled sample file
    transforms.py  batched augmentation, channel statistics, balanced subsets
    adapt.py       the user's own data (DataLoader, torch Dataset, arrays) -> [0, 1] batches
    normalize.py   the Normalize a user's dataset applies, read from its transform
"""

from camlens.data.adapt import as_dataset, from_user_data
from camlens.data.dataset import Dataset, Split
from camlens.data.decode import DataConfig, Preprocess
from camlens.data.load import load_dataset
from camlens.data.names import class_names
from camlens.data.normalize import dataset_normalization, read_normalization
from camlens.data.sample import SAMPLE_PATH, save_sample
from camlens.data.sources import DataError
from camlens.data.store import ImageStore
from camlens.data.transforms import augment, balanced_subset, channel_stats
from camlens.data.user import UserData
from camlens.download import default_home

__all__ = [
    "DataConfig",
    "DataError",
    "Dataset",
    "ImageStore",
    "Preprocess",
    "Split",
    "class_names",
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
