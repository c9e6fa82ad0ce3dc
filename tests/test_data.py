import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from camlens.data import DataError, augment, balanced_subset, channel_stats, load_dataset
from camlens.data.transforms import cutout, random_crop, random_flip
from conftest import CLASSES, tar_folder, write_cifar_batches, write_image_folder


def test_image_folder_loads_pixels_labels_and_sorted_classes(tmp_path):
    written = write_image_folder(tmp_path / "d", n_train=3, n_test=2)
    d = load_dataset(tmp_path / "d", progress=False)
    assert d.classes == tuple(sorted(CLASSES))
    assert d.train.images.shape == (12, 3, 32, 32) and d.train.images.dtype == torch.uint8
    assert d.train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    expected = torch.from_numpy(np.stack(written["test"])).permute(0, 3, 1, 2)
    assert torch.equal(d.test.images, expected)  # PNG is lossless: exact pixels, CHW order


def test_archive_of_a_folder_equals_the_folder(tmp_path):
    write_image_folder(tmp_path / "d", n_train=2, n_test=2)
    from_folder = load_dataset(tmp_path / "d", progress=False)
    from_tar = load_dataset(tar_folder(tmp_path / "d", tmp_path / "d.tar.gz"), progress=False)
    assert from_tar.classes == from_folder.classes
    assert torch.equal(from_tar.train.images, from_folder.train.images)
    assert torch.equal(from_tar.test.labels, from_folder.test.labels)


@pytest.mark.parametrize("packed", [False, True])
def test_official_batches_folder_and_archive(tmp_path, packed):
    batches = write_cifar_batches(tmp_path / "src" / "cifar-10-batches-py")
    source = tmp_path / "src"
    if packed:
        source = tar_folder(
            source / "cifar-10-batches-py", tmp_path / "c.tar.gz", "cifar-10-batches-py"
        )
    d = load_dataset(source, progress=False)
    assert d.classes == tuple(f"class{i}" for i in range(10))
    hwc, labels = batches["test_batch"]
    assert torch.equal(d.test.images, torch.from_numpy(hwc).permute(0, 3, 1, 2))
    assert d.test.labels.tolist() == labels.tolist()
    assert len(d.train) == 5 * 4


def test_batches_never_unpickle_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_batches(folder)

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(DataError, match="test_batch"):
        load_dataset(folder, progress=False)
    assert not (tmp_path / "pwned").exists()


def test_second_load_comes_from_the_caches(tmp_path, monkeypatch):
    write_image_folder(tmp_path / "d", n_train=2, n_test=1)
    write_cifar_batches(tmp_path / "b" / "cifar-10-batches-py")
    first = load_dataset(tmp_path / "d", progress=False)
    first_batches = load_dataset(tmp_path / "b", progress=False)

    def no_reading(*args, **kwargs):
        raise AssertionError("read again despite the cache")

    monkeypatch.setattr("camlens.data.load.index_folder", no_reading)
    monkeypatch.setattr("camlens.data.load._read_official", no_reading)
    second = load_dataset(tmp_path / "d", progress=False)
    assert torch.equal(first.train.images, second.train.images)
    assert second.checksum == first.checksum
    batches = load_dataset(tmp_path / "b", progress=False)
    assert torch.equal(batches.test.images, first_batches.test.images)


def test_cache_key_follows_content_and_size(tmp_path):
    write_image_folder(tmp_path / "d", n_train=2, n_test=1)
    a = load_dataset(tmp_path / "d", progress=False)
    assert load_dataset(tmp_path / "d", image_size=16, progress=False).train.images.shape[-1] == 16
    img = tmp_path / "d" / "train" / "cat" / "0000.png"
    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(img)
    os.utime(img, ns=(1, 1))  # a different mtime, whatever the clock's resolution
    b = load_dataset(tmp_path / "d", progress=False)
    assert b.checksum != a.checksum
    assert int(b.train.images[0].float().mean()) == 7


def test_odd_modes_and_sizes_become_rgb_at_the_configured_size(tmp_path):
    write_image_folder(tmp_path / "d", n_train=1, n_test=1)
    folder = tmp_path / "d" / "train" / "cat"
    Image.new("L", (20, 20), 128).save(folder / "gray.png")
    Image.new("P", (40, 24), 3).save(folder / "palette.png")
    Image.new("RGBA", (64, 64), (10, 200, 30, 90)).save(folder / "rgba.png")
    Image.new("RGB", (50, 30), (255, 0, 0)).save(folder / "wide.jpg", quality=95)
    d = load_dataset(tmp_path / "d", progress=False)
    cats = d.train.images[d.train.labels == 0]
    assert cats.shape == (5, 3, 32, 32)
    by_name = dict(zip(["0000", "gray", "palette", "rgba", "wide"], cats, strict=True))
    assert torch.all(by_name["gray"] == 128)
    assert by_name["rgba"][:, 5, 5].tolist() == [10, 200, 30]
    assert by_name["wide"][0].float().mean() > 240 and by_name["wide"][1].float().mean() < 15


def test_empty_class_folder_is_named(tmp_path):
    write_image_folder(tmp_path / "d", n_train=1, n_test=1)
    (tmp_path / "d" / "train" / "zebra").mkdir()
    (tmp_path / "d" / "test" / "zebra").mkdir()
    with pytest.raises(DataError, match=r"train/zebra"):
        load_dataset(tmp_path / "d", progress=False)


def test_empty_class_folder_in_an_archive_is_named(tmp_path):
    write_image_folder(tmp_path / "d", n_train=1, n_test=1)
    (tmp_path / "d" / "test" / "cat").joinpath("0000.png").unlink()
    with pytest.raises(DataError, match=r"test/cat"):
        load_dataset(tar_folder(tmp_path / "d", tmp_path / "d.tgz"), progress=False)


def test_split_without_classes_and_missing_split(tmp_path):
    write_image_folder(tmp_path / "d", n_train=1, n_test=1)
    for cls in CLASSES:
        for f in (tmp_path / "d" / "test" / cls).iterdir():
            f.unlink()
        (tmp_path / "d" / "test" / cls).rmdir()
    with pytest.raises(DataError, match=r"test has no class folders"):
        load_dataset(tmp_path / "d", progress=False)
    (tmp_path / "d" / "test").rmdir()
    with pytest.raises(DataError, match=r"test not found"):
        load_dataset(tmp_path / "d", progress=False)


def test_missing_source_says_what_to_pass(tmp_path):
    with pytest.raises(DataError, match="not found.*cifar10"):
        load_dataset(tmp_path / "nothing-here", progress=False)


# ----------------------------------------------------------------------------- hostile archives

B = "cifar-10-batches-py"
BATCH_1 = f"{B}/data_batch_1"


def member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, target: str = ""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, target, len(data)
    if kind == tarfile.CHRTYPE:
        info.devmajor, info.devminor = 1, 3
    return info, (io.BytesIO(data) if kind == tarfile.REGTYPE else None)


# data_batch_1 only as a member no reader may take for it: each, if read, would yield a batch
HOSTILE = {
    "dotdot": lambda valid: member(f"../{BATCH_1}", valid),
    "absolute": lambda valid: member(f"/{BATCH_1}", valid),
    "symlink-outside": lambda _: member(BATCH_1, kind=tarfile.SYMTYPE, target="/etc/passwd"),
    "symlink-inside": lambda _: member(BATCH_1, kind=tarfile.SYMTYPE, target="test_batch"),
    "hardlink": lambda _: member(BATCH_1, kind=tarfile.LNKTYPE, target=f"{B}/test_batch"),
    "device": lambda _: member(BATCH_1, kind=tarfile.CHRTYPE),
}


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_archive_members_are_never_read_nor_followed(tmp_path, kind):
    write_cifar_batches(tmp_path / B)
    files = {p.name: p.read_bytes() for p in sorted((tmp_path / B).iterdir())}
    archive = tmp_path / "bad.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in files.items():
            if name != "data_batch_1":
                tar.addfile(*member(f"{B}/{name}", data))
        tar.addfile(*HOSTILE[kind](files["data_batch_1"]))
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(DataError, match="lacks data_batch_1"):
        load_dataset(archive, progress=False)
    assert sorted(tmp_path.rglob("*")) == before  # read in memory: nothing written anywhere


def test_links_in_an_image_folder_archive_are_skipped(tmp_path):
    write_image_folder(tmp_path / "d", n_train=2, n_test=1)
    archive = tmp_path / "d.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tmp_path / "d", arcname="data")
        tar.addfile(*member("data/train/cat/up.png", kind=tarfile.SYMTYPE, target="/etc/passwd"))
        tar.addfile(*member("data/train/cat/h.png", kind=tarfile.LNKTYPE, target="/etc/passwd"))
        tar.addfile(*member("data/test/cat/null.png", kind=tarfile.CHRTYPE))
    assert len(load_dataset(archive, progress=False).train) == 2 * len(CLASSES)


def test_a_corrupt_archive_is_a_data_error(tmp_path):
    (tmp_path / "x.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match="cannot read archive"):
        load_dataset(tmp_path / "x.tar.gz", progress=False)


# ----------------------------------------------------------------------------- transforms


def reflect_reference(image, pad):
    """Mirror without repeating the edge, index by index: -1 -> 1, h -> h - 2."""
    h, w = image.shape[1:]
    fold = lambda i, n: -i if i < 0 else (2 * (n - 1) - i if i >= n else i)  # noqa: E731
    rows = [fold(i, h) for i in range(-pad, h + pad)]
    cols = [fold(j, w) for j in range(-pad, w + pad)]
    return image[:, rows][:, :, cols]


@pytest.mark.parametrize("padding", ["zeros", "reflect"])
def test_random_crop_matches_a_per_image_reference(padding):
    g = torch.Generator().manual_seed(3)
    images = torch.rand(6, 3, 8, 8)
    out = random_crop(images, 2, torch.Generator().manual_seed(3), padding)
    dy = torch.randint(0, 5, (6,), generator=g)
    dx = torch.randint(0, 5, (6,), generator=g)
    assert (dy != 2).any() and (dx != 2).any(), "the test needs crops that reach the border"
    for i in range(6):
        if padding == "zeros":
            padded = torch.zeros(3, 12, 12)
            padded[:, 2:10, 2:10] = images[i]
        else:
            padded = reflect_reference(images[i], 2)
        window = padded[:, dy[i] : dy[i] + 8, dx[i] : dx[i] + 8]
        assert torch.equal(out[i], window)
    with pytest.raises(ValueError, match="padding must be one of zeros, reflect"):
        random_crop(images, 2, g, "edge")


def test_flip_mirrors_about_half_and_keeps_the_rest():
    images = torch.rand(400, 3, 4, 4)
    out = random_flip(images, torch.Generator().manual_seed(0))
    same = (out == images).flatten(1).all(1)
    mirrored = (out == images.flip(3)).flatten(1).all(1)
    assert torch.all(same | mirrored)
    assert 150 < mirrored.sum() < 250


def test_cutout_zeroes_one_square_of_at_most_size_squared():
    images = torch.ones(200, 3, 32, 32)
    out = cutout(images, 8, torch.Generator().manual_seed(1))
    holes = (out[:, 0] == 0).flatten(1).sum(1)
    assert holes.max() == 64 and holes.min() >= 16  # partly outside near the border
    assert torch.all((out == 0).all(1) | (out == 1).all(1))  # all channels together


def test_augment_is_fixed_by_the_seed_and_switchable():
    images = torch.rand(5, 3, 32, 32)
    a = augment(images, torch.Generator().manual_seed(7))
    b = augment(images, torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and not torch.equal(a, images)
    off = augment(images, torch.Generator().manual_seed(7), crop=False, flip=False, cut=False)
    assert torch.equal(off, images)


def test_channel_stats_match_numpy():
    images = torch.randint(0, 256, (10, 3, 5, 5), dtype=torch.uint8)
    mean, std = channel_stats(images, chunk=3)
    x = images.numpy().astype(np.float64) / 255
    assert np.allclose(mean, x.mean(axis=(0, 2, 3)))
    assert np.allclose(std, x.std(axis=(0, 2, 3)))


def test_balanced_subset_takes_the_first_of_each_class():
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 2, 1, 2, 0])
    idx = balanced_subset(labels, 7)
    assert labels[idx].bincount().tolist() == [3, 2, 2]
    assert idx.tolist() == [0, 1, 2, 3, 4, 5, 6]


def test_decode_rejects_non_images_with_the_name():
    from camlens.data.decode import decode_image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    assert decode_image(buf.getvalue(), "ok.png", 8).shape == (8, 8, 3)
    with pytest.raises(DataError, match="x.png"):
        decode_image(buf.getvalue()[:20], "x.png", 8)


def test_sample_round_trip_keeps_the_first_images_of_each_class(tmp_path):
    from camlens.data import save_sample

    write_image_folder(tmp_path / "d", n_train=1, n_test=5)
    d = load_dataset(tmp_path / "d", progress=False)
    path = save_sample(d, tmp_path / "s.safetensors", per_class=2, label="tiny sample")
    s = load_dataset(path, progress=False)
    assert s.classes == d.classes and s.source == "tiny sample" and len(s.train) == 0
    expected = torch.cat([d.test.images[d.test.labels == k][:2] for k in range(len(CLASSES))])
    assert torch.equal(s.test.images, expected)
    assert s.test.labels.bincount().tolist() == [2] * len(CLASSES)


def test_the_bundled_sample_holds_100_test_images_per_class():
    s = load_dataset("sample", progress=False)
    assert s.classes[0] == "airplane" and len(s.classes) == 10
    assert s.test.images.shape == (1000, 3, 32, 32)
    assert s.test.labels.bincount().tolist() == [100] * 10
    assert "JPEG q75" in s.source


def test_a_checkpoint_passed_as_data_is_a_clear_error(tmp_path):
    from camlens.model import ResNet18, save_checkpoint

    path = save_checkpoint(ResNet18(width=8), tmp_path / "ck", {"classes": list("abcdefghij")})
    with pytest.raises(DataError, match="not a camlens sample.*--checkpoint"):
        load_dataset(path, progress=False)
