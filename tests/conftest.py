"""Shared fixtures: a private CAMLENS_HOME and tiny datasets written in the real file formats."""

from __future__ import annotations

import io
import json
import math
import pickle
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

CLASSES = ("cat", "dog", "frog", "ship")


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
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
    mistakes = type(mistakes)(
        *[getattr(mistakes, f) for f in ("indices", "labels", "preds", "probs", "margins")],
        images=images[mistakes.indices],
    )
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


# Results of one job computed in two layouts (processes, thread counts, chunks, batch shapes)
# agree only to fp32 rounding unless the two ran the same ops on the same batches: oneDNN's
# kernels are not bit-identical across batch shapes and thread counts on every CPU (an AMD EPYC
# differs where a Xeon does not). These compare such results as the docs promise them:
# decisions (strings, bools, ints: predictions, verdicts, file names, order) exactly, numbers
# to fp32 rounding, pictures to one grey level.
RTOL, ATOL = 1e-5, 1e-6  # fp32 carries ~7 digits; a score summed over a few thousand pixels ~6
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _printed_step(text: str) -> float:
    """One unit in the last digit `text` prints: how far a rounding step can move it."""
    mantissa, _, exponent = text.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    return 10.0 ** (int(exponent or 0) - decimals)


def assert_same_results(a, b, where: str = "", rtol: float = RTOL, atol: float = ATOL) -> None:
    """Nested JSON-like results: floats to fp32 rounding (NaN equals NaN), all else exactly."""
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)), (where, a, b)
        assert not (isinstance(a, bool) or isinstance(b, bool)), (where, a, b)
        if math.isnan(a) or math.isnan(b):
            assert math.isnan(a) and math.isnan(b), (where, a, b)
        else:
            assert a == pytest.approx(b, rel=rtol, abs=atol), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), (where, list(a), list(b))
        for k in a:
            assert_same_results(a[k], b[k], f"{where}.{k}", rtol, atol)
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), (where, a, b)
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_results(x, y, f"{where}[{i}]", rtol, atol)
    else:
        assert a == b, (where, a, b)


def assert_same_text(a: str, b: str, where: str = "", rtol: float = RTOL, atol: float = ATOL):
    """Text (csv, lines) with its numbers to fp32 rounding, one printed digit's step allowed
    (0.1235 against 0.1234 where the value was 0.12345), and every other character exact."""
    assert _NUMBER.sub("#", a) == _NUMBER.sub("#", b), where  # the words, exactly
    for x, y in zip(_NUMBER.finditer(a), _NUMBER.finditer(b), strict=True):
        u, v = x.group(), y.group()
        if u != v:
            step = max(_printed_step(u), _printed_step(v))
            assert float(u) == pytest.approx(float(v), rel=rtol, abs=atol + step), (where, u, v)


def assert_same_picture(a: bytes, b: bytes, where: str = "", grey_levels: int = 1) -> None:
    """Two PNGs of the same size whose pixels differ by at most `grey_levels` of 255."""
    x = np.asarray(Image.open(io.BytesIO(a))).astype(np.int16)
    y = np.asarray(Image.open(io.BytesIO(b))).astype(np.int16)
    assert x.shape == y.shape, (where, x.shape, y.shape)
    worst = int(np.abs(x - y).max()) if x.size else 0
    assert worst <= grey_levels, f"{where}: pixels differ by {worst} grey levels"


def assert_same_folders(one: Path, two: Path) -> list[Path]:
    """Two output folders of one job in two layouts: the same files, each the same to rounding
    (json and csv numbers to fp32 rounding, text exactly, PNGs to one grey level). -> the files."""
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    for rel in files:
        a, b = (one / rel).read_bytes(), (two / rel).read_bytes()
        if a == b:
            continue
        if rel.suffix == ".png":
            assert_same_picture(a, b, str(rel))
        elif rel.suffix == ".json":
            assert_same_results(json.loads(a), json.loads(b), str(rel))
        else:
            assert_same_text(a.decode(), b.decode(), str(rel))
    return files
