"""Shared fixtures: a private CAMLENS_HOME and tiny datasets written in the real file formats."""

from __future__ import annotations

import dataclasses
import os
import pickle
import tarfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

CLASSES = ("cat", "dog", "frog", "ship")

# The CUDA tests' switch: without it the suite runs on the CPU (see pytest_configure)
CUDA_SWITCH = "CAMLENS_TEST_CUDA"


def pytest_configure(config) -> None:
    """Pin the suite to the CPU, subprocesses included (torchrun's workers, the CLI's): on a
    GPU machine `--device auto` would pick CUDA, and two ranks on one GPU would ask for cuda:0
    and cuda:1. Before any CUDA call, so torch never sees a GPU. CAMLENS_TEST_CUDA=1 leaves the
    GPUs visible, for the CUDA tests (`-k cuda`, benchmarks/gpu_session.sh)."""
    if not os.environ.get(CUDA_SWITCH):
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


@pytest.fixture(autouse=True)
def camlens_home(tmp_path_factory, monkeypatch) -> Path:
    """Keep every cache and download of the suite out of the user's ~/.cache."""
    home = tmp_path_factory.mktemp("camlens-home")
    monkeypatch.setenv("CAMLENS_HOME", str(home))
    return home


def class_image(label: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """Noise plus a bright square whose place and colour depend on the class: learnable."""
    img = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
    q = size // 2
    y, x = divmod(label % 4, 2)
    img[y * q : y * q + q, x * q : x * q + q, label % 3] = 230
    return img


def write_image_folder(
    root: Path, n_train: int = 12, n_test: int = 6, classes=CLASSES, size: int = 32, seed: int = 0
) -> dict[str, list[np.ndarray]]:
    """ROOT/{train,test}/<class>/NNNN.png; returns the pixels written, in loading order."""
    rng = np.random.default_rng(seed)
    written: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    for split, n in (("train", n_train), ("test", n_test)):
        for label, cls in enumerate(classes):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = class_image(label, rng, size)
                Image.fromarray(img).save(folder / f"{i:04d}.png")
                written[split].append(img)
    return written


def tar_folder(root: Path, archive: Path, arcname: str = "data") -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname=arcname)
    return archive


def write_cifar_batches(folder: Path, per_batch: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """Fake official batches, pickled exactly like the real ones (bytes keys, uint8 rows)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    images = {}
    for name in names:
        labels = [int(x) for x in rng.integers(0, 10, per_batch)]
        hwc = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
        rows = hwc.transpose(0, 3, 1, 2).reshape(per_batch, 3072)  # the official channel-major rows
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": rows}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        images[name] = (hwc, np.array(labels))
    meta = {b"label_names": [f"class{i}".encode() for i in range(10)], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return images


@pytest.fixture(scope="module")
def one_thread():
    """For tests on tiny tensors: thread start-up and barriers cost more than they save."""
    with threads(1):
        yield


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny") / "data"
    write_image_folder(root)
    return root


@pytest.fixture(scope="module")
def tiny_mistakes():
    """An untrained narrow ResNet18 and its mistakes on 30 random images, images attached."""
    from camlens.evaluate import find_mistakes, predict
    from camlens.model import ResNet18

    torch.manual_seed(0)
    model = ResNet18(5, width=8).eval()
    images = torch.randint(0, 256, (30, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(30) % 5
    mistakes = find_mistakes(predict(model, images), labels)
    mistakes = dataclasses.replace(mistakes, images=images[mistakes.indices])
    assert len(mistakes) >= 10
    return model, mistakes


# torchvision's transforms as a user's script has them, without torchvision (it does not import
# beside the CPU torch here): what camlens must read a normalisation from by duck typing
class ToTensor:  # torchvision's: HWC uint8 -> CHW float in [0, 1]
    def __call__(self, pixels):
        return torch.from_numpy(pixels).permute(2, 0, 1).float() / 255


class Normalize:  # torchvision's: per-channel (x - mean) / std, with .mean and .std
    def __init__(self, mean, std):
        self.mean, self.std = mean, std

    def __call__(self, x):
        return (x - torch.tensor(self.mean)[:, None, None]) / torch.tensor(self.std)[:, None, None]


class Compose:
    def __init__(self, transforms):
        self.transforms = transforms

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x


# torchvision.transforms.v2's: each an nn.Module, Compose's transforms a plain list, the
# Normalize's mean and std lists
class NormalizeV2(torch.nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.mean, self.std = list(mean), list(std)

    def forward(self, x):
        return Normalize(self.mean, self.std)(x)


class ComposeV2(torch.nn.Module):
    def __init__(self, transforms):
        super().__init__()
        self.transforms = transforms

    def forward(self, x):
        return Compose(self.transforms)(x)


class StandardTransform:  # torchvision's: a VisionDataset's (transform, target_transform)
    def __init__(self, transform=None, target_transform=None):
        self.transform, self.target_transform = transform, target_transform

    def __call__(self, x, y):
        x = x if self.transform is None else self.transform(x)
        return x, (y if self.target_transform is None else self.target_transform(y))


class CIFAR10(torch.utils.data.Dataset):
    """torchvision.datasets.CIFAR10 as a VisionDataset holds it: .data (N, 32, 32, 3) uint8,
    .targets, .classes, and .transform beside .transforms (its StandardTransform), or only
    .transforms when built with transforms= (a callable on (image, target))."""

    def __init__(self, data, targets, classes, transform=None, transforms=None):
        self.data, self.targets, self.classes = data, list(targets), list(classes)
        self.transform, self.target_transform = transform, None
        self.transforms = StandardTransform(transform) if transform is not None else transforms

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        if self.transforms is None:
            return self.data[i], self.targets[i]
        return self.transforms(self.data[i], self.targets[i])


# a map that ignores the model, for the checks that must fail it (sanity, compare)
def edge_engine(model):
    """A "method" that ignores the model: the Sobel magnitude of the grey image."""
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]).view(1, 1, 3, 3)

    def engine(images, targets):
        grey = images.mean(1, keepdim=True)
        mag = torch.hypot(F.conv2d(grey, kx, padding=1), F.conv2d(grey, kx.mT, padding=1))[:, 0]
        lo, hi = mag.amin((1, 2), keepdim=True), mag.amax((1, 2), keepdim=True)
        return (mag - lo) / (hi - lo)

    return engine


@contextmanager
def threads(n: int):
    """torch at `n` threads inside the block: one job at two thread counts, side by side."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
