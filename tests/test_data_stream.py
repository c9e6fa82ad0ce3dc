"""Data at ImageNet's shape on tiny fakes: val-only folders, the eval crop, damaged files,
class-name files, photos in every mode, and memory that does not grow with the images."""

import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from camlens.data import DataError, ImageStore, Preprocess, load_dataset
from camlens.data.decode import decode_image
from camlens.evaluate import evaluate, predict
from conftest import CLASSES, class_image, tar_folder, write_image_folder


def _val_folder(root, per_class=3, size=32, classes=CLASSES, top=False):
    rng = np.random.default_rng(0)
    written = []
    for label, cls in enumerate(classes):
        folder = (root / cls) if top else (root / "val" / cls)
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = class_image(label, rng, size)
            Image.fromarray(img).save(folder / f"{i:04d}.png")
            written.append(img)
    return torch.from_numpy(np.stack(written)).permute(0, 3, 1, 2)  # (N, H, W, 3) -> (N, 3, H, W)


# ----------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("top", [False, True], ids=["val", "top-level"])
def test_a_folder_of_one_split_is_enough_and_says_which(tmp_path, capsys, top):
    pixels = _val_folder(tmp_path / "d", top=top)
    d = load_dataset(tmp_path / "d", progress=False)
    assert len(d.train) == 0 and d.classes == tuple(sorted(CLASSES))
    assert isinstance(d.test.images, ImageStore)
    assert torch.equal(d.test.images[:], pixels)
    said = [line for line in capsys.readouterr().err.splitlines() if "evaluating on" in line]
    assert len(said) == 1
    assert ("class folders at the top level" if top else "val/") in said[0]


def test_a_tar_of_a_val_folder_reads_members_in_place(tmp_path):
    pixels = _val_folder(tmp_path / "d")
    plain = tmp_path / "d.tar"
    with tarfile.open(plain, "w") as tar:
        tar.add(tmp_path / "d", arcname="imagenet")
    for archive in (plain, tar_folder(tmp_path / "d", tmp_path / "d.tar.gz")):
        d = load_dataset(archive, progress=False)
        assert torch.equal(d.test.images[:], pixels) and len(d.train) == 0
        idx = torch.tensor([5, 0, 11])  # any order: each row is one pread at its offset
        assert torch.equal(d.test.images[idx], pixels[idx])


def test_train_is_never_decoded_to_evaluate(tmp_path, monkeypatch):
    write_image_folder(tmp_path / "d", n_train=2, n_test=2)
    d = load_dataset(tmp_path / "d", progress=False)
    test_names = set(d.test.images.names)
    opened = []
    real = open

    def spy(file, *args, **kwargs):
        opened.append(str(file))
        return real(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spy)
    monkeypatch.setenv("CAMLENS_WORKERS", "0")  # every read in this process, where the spy is
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, len(CLASSES)))
    evaluate(model, d.test, batch_size=3)
    read = {f for f in opened if f.endswith(".png")}
    assert read == test_names  # every test image once, no train image


# ----------------------------------------------------------------------------- the eval crop


def test_a_wide_photo_loses_its_border_to_the_centre_crop(tmp_path):
    # 96 x 32: a red centre square between blue borders. The eval transform keeps the short
    # side (32) and crops the centre: all red. A square resize would squash blue in.
    photo = np.zeros((32, 96, 3), np.uint8)
    photo[:, :32] = (0, 0, 255)
    photo[:, 32:64] = (255, 0, 0)
    photo[:, 64:] = (0, 0, 255)
    (tmp_path / "d" / "val" / "x").mkdir(parents=True)
    Image.fromarray(photo).save(tmp_path / "d" / "val" / "x" / "wide.png")
    got = load_dataset(tmp_path / "d", progress=False).test.images[0]
    assert got.shape == (3, 32, 32)
    assert torch.all(got[0] == 255) and torch.all(got[2] == 0)


def test_resize_then_crop_matches_torchvision_rounding():
    # 300 x 200 -> short side 256 (384 x 256, int(256 * 300 / 200)) -> centre 224:
    # top = round((256 - 224) / 2) = 16, left = round((384 - 224) / 2) = 80
    grid = np.zeros((200, 300, 3), np.uint8)
    grid[..., 0] = np.arange(300)[None, :] * 255 // 299  # red ramps left to right
    grid[..., 1] = np.arange(200)[:, None] * 255 // 199  # green ramps top to bottom
    buf = io.BytesIO()
    Image.fromarray(grid).save(buf, format="PNG")
    prep = Preprocess(224, 256, "bilinear")
    got = decode_image(buf.getvalue(), "g.png", prep)
    want = np.asarray(
        Image.fromarray(grid).resize((384, 256), Image.Resampling.BILINEAR).crop((80, 16, 304, 240))
    )
    assert got.shape == (224, 224, 3) and np.array_equal(got, want)


def test_a_cifar_sized_image_passes_untouched():
    img = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    assert np.array_equal(decode_image(buf.getvalue(), "c.png", Preprocess(32)), img)


def test_timm_crop_pct_and_bad_settings():
    assert Preprocess.from_crop_pct(224, 0.875, "bicubic").resize == 256
    with pytest.raises(DataError, match="--resize 200 is smaller than the crop 224"):
        Preprocess(224, 200)
    with pytest.raises(DataError, match="unknown --interpolation"):
        Preprocess(224, interpolation="cubic")


# ----------------------------------------------------------------------------- photo modes


def _encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_every_mode_becomes_upright_rgb():
    prep = Preprocess(8)
    grey16 = Image.fromarray(np.full((8, 8), 65535 // 2, np.uint16))  # mode I;16
    assert np.all(np.abs(decode_image(_encoded(grey16, "PNG"), "g16.png", prep) - 127) <= 1)
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red in CMYK
    rgb = decode_image(_encoded(cmyk, "JPEG", quality=95), "c.jpg", prep)
    assert rgb[..., 0].mean() > 200 and rgb[..., 1].mean() < 60
    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    assert decode_image(_encoded(pal, "PNG"), "p.png", prep)[0, 0].tolist() == [10, 200, 30]
    # stored 16 wide x 8 tall, EXIF orientation 6 (turn 90 degrees clockwise): upright it is
    # 8 wide x 16 tall, its left half (stored top half) white
    stored = np.zeros((8, 16, 3), np.uint8)
    stored[:4] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encoded(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes())
    upright = decode_image(data, "r.jpg", Preprocess(8))  # short side 8: the middle 8 rows
    assert upright[:, :4].mean() < 30 or upright[:, 4:].mean() < 30  # turned: halves left/right
    assert abs(float(upright[:, :4].mean()) - float(upright[:, 4:].mean())) > 200


# ----------------------------------------------------------------------------- damaged files


def test_a_corrupt_jpeg_among_good_ones_is_skipped_in_one_line(tmp_path, capsys):
    write_image_folder(tmp_path / "d", n_train=1, n_test=2)
    bad = tmp_path / "d" / "test" / "dog" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    d = load_dataset(tmp_path / "d", progress=False)
    assert len(d.test) == 2 * len(CLASSES)  # the good ones, all of them
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "broken.jpg" in ln]
    assert len(lines) == 1 and "skipped" in lines[0]
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, len(CLASSES)))
    assert evaluate(model, d.test).logits.shape == (2 * len(CLASSES), len(CLASSES))


def test_a_file_damaged_past_its_header_is_read_black_and_named(tmp_path, capsys):
    write_image_folder(tmp_path / "d", n_train=1, n_test=1)
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    good = _encoded(Image.fromarray(noise), "JPEG", quality=90)
    cut = good[: len(good) * 3 // 4]  # the header and part of the scan: it opens, then fails
    (tmp_path / "d" / "test" / "dog" / "cut.jpg").write_bytes(cut)
    d = load_dataset(tmp_path / "d", progress=False)
    row = d.test.images.names.index(str(tmp_path / "d" / "test" / "dog" / "cut.jpg"))
    image = d.test.images[row]
    assert image.shape == (3, 32, 32)
    said = [ln for ln in capsys.readouterr().err.splitlines() if "cut.jpg" in ln]
    assert len(said) == 1 and torch.all(image == 0) and "black" in said[0]


# ----------------------------------------------------------------------------- class names


def test_class_names_from_txt_and_json(tmp_path):
    wnids = ("n01440764", "n01443537", "n01484850", "n01491361")
    names = ("tench", "goldfish", "great white shark", "tiger shark")
    _val_folder(tmp_path / "d", per_class=1, classes=wnids)
    txt = tmp_path / "names.txt"
    txt.write_text("\n".join(names) + "\n")
    by_wnid = tmp_path / "wnid.json"
    by_wnid.write_text(json.dumps(dict(zip(reversed(wnids), reversed(names), strict=True))))
    index = tmp_path / "imagenet_class_index.json"
    index.write_text(
        json.dumps({str(i): [w, n] for i, (w, n) in enumerate(zip(wnids, names, strict=True))})
    )
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps(list(names)))
    for source in (txt, by_wnid, index, listed):
        assert load_dataset(tmp_path / "d", classes=source, progress=False).classes == names
    short = tmp_path / "short.txt"
    short.write_text("tench\ngoldfish\n")
    with pytest.raises(DataError, match="names 2 classes but the data has 4"):
        load_dataset(tmp_path / "d", classes=short, progress=False)


# ----------------------------------------------------------------------------- streaming


def test_predict_over_a_store_in_workers_equals_predict_over_the_tensor(tmp_path):
    _val_folder(tmp_path / "d", per_class=5)
    d = load_dataset(tmp_path / "d", progress=False)
    whole = d.test.images[:]
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, len(CLASSES)))
    streamed = predict(model, d.test.images, batch_size=3, workers=2)
    assert torch.allclose(streamed, predict(model, whole, batch_size=3))
    mask = d.test.labels == 1
    assert torch.equal(d.test.images[mask], whole[mask])  # masks, tensors, ints, slices
    assert torch.equal(d.test.images[-1], whole[-1]) and torch.equal(d.test.images[2:7], whole[2:7])


def test_a_small_split_is_decoded_once_then_mapped(tmp_path, monkeypatch):
    pixels = _val_folder(tmp_path / "d", per_class=2)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, len(CLASSES)))
    first = predict(model, load_dataset(tmp_path / "d", progress=False).test.images, workers=0)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr("camlens.data.store.decode_image", no_decoding)
    again = load_dataset(tmp_path / "d", progress=False).test.images  # a later job's load
    assert torch.equal(predict(model, again, workers=0), first)
    assert torch.equal(again[torch.tensor([3, 1])], pixels[[3, 1]])


_MEMORY = textwrap.dedent(
    """
    import sys
    import torch
    from camlens.data import load_dataset
    from camlens.evaluate import evaluate

    def kib(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field))

    torch.set_num_threads(1)
    data = load_dataset(sys.argv[1], image_size=128, progress=False)
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(48, 4))
    model(data.test.images[:2].float())  # torch's first-call set-up is not the pass's
    before = kib("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak (VmHWM) starts again from here: import's peak is not the pass's
    evaluate(model, data.test, batch_size=32)
    print(kib("VmHWM:") - before)  # KiB the pass added at its peak
    """
)
# N -> 4N adds 480 images of 49 KB: 24 MB were they held, even as uint8. glibc's mmap
# threshold is pinned (it otherwise rises with the first large free and the heap keeps what
# later batches freed, a growth that settles but blurs a test at this size)
GROWTH_BOUND_MB = 8


def _peak_growth_kib(root, n_per_class):
    rng = np.random.default_rng(0)
    for cls in CLASSES:
        folder = root / "val" / cls
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            img = np.kron(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), np.ones((8, 8, 1)))
            Image.fromarray(img.astype(np.uint8)).save(folder / f"{i}.jpg", quality=80)
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY, str(root)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "CAMLENS_WORKERS": "0", "MALLOC_MMAP_THRESHOLD_": "65536"},
    )
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux's peak reset")
def test_peak_memory_does_not_grow_with_the_number_of_images(tmp_path):
    """An evaluation of 4N 128-px images peaks within GROWTH_BOUND_MB of one of N: the images
    stream through (workers 0, so every decode is in the measured process)."""
    small = _peak_growth_kib(tmp_path / "n", 40)  # N = 160 images
    large = _peak_growth_kib(tmp_path / "4n", 160)  # 4N = 640 images
    assert (large - small) / 1024 < GROWTH_BOUND_MB, f"peak growth {small} KiB at N, {large} at 4N"


# ----------------------------------------------------------------------------- the CLI

NET = """
from torch import nn

def make(num_classes=10):
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes))
"""


def test_evaluate_a_val_folder_of_photos_with_names_and_the_eval_crop(tmp_path, capsys):
    from safetensors.torch import save_file

    from camlens.cli import main

    rng = np.random.default_rng(0)
    wnids = ("n01", "n02", "n03")
    for k, wnid in enumerate(wnids):
        (tmp_path / "imgs" / "val" / wnid).mkdir(parents=True)
        for i, (w, h) in enumerate([(80, 60), (60, 90)]):  # photos of every shape
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(img).save(tmp_path / "imgs" / "val" / wnid / f"{k}{i}.JPEG")
    (tmp_path / "names.json").write_text(
        json.dumps({"n01": "tench", "n02": "goldfish", "n03": "shark"})
    )
    (tmp_path / "net.py").write_text(NET)
    namespace: dict = {}
    exec(compile(NET, "net.py", "exec"), namespace)
    save_file(namespace["make"](3).state_dict(), tmp_path / "w.safetensors")
    argv = [
        "evaluate",
        "--model",
        f"{tmp_path}/net.py:make",
        "--weights",
        tmp_path / "w.safetensors",
    ]
    argv += ["--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--data", tmp_path / "imgs"]
    argv += ["--classes", tmp_path / "names.json", "--resize", "40", "--crop", "32"]
    argv += ["--out", tmp_path / "eval", "--no-progress"]
    assert main([str(a) for a in argv]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["images"] == 6 and set(metrics["per_class_acc"]) == {
        "tench",
        "goldfish",
        "shark",
    }
    assert "evaluating on val/" in capsys.readouterr().err


def test_every_tensor_a_store_hands_back_is_on_the_cpu_whatever_the_default_device(tmp_path):
    _val_folder(tmp_path / "d", per_class=1)
    with torch.device("meta"):  # what a GPU default would do: nothing may follow it
        d = load_dataset(tmp_path / "d", progress=False)
        picked = d.test.images[torch.tensor([0, 2], device="cpu")]
        empty = d.test.images[torch.zeros(len(d.test), dtype=torch.bool, device="cpu")]
        batches = list(d.test.images.batches(2, workers=0))
    assert {t.device.type for t in (picked, empty, d.train.images, d.test.labels, *batches)} == {
        "cpu"
    }


def test_a_timm_model_states_its_eval_transform_and_flags_override_it(monkeypatch):
    import types

    from camlens.classifier.load import stated_eval
    from camlens.classifier.spec import ModelConfig
    from camlens.data import DataConfig

    cfg = types.SimpleNamespace(crop_pct=0.875, interpolation="bicubic", input_size=(3, 224, 224))
    fake = types.SimpleNamespace(get_pretrained_cfg=lambda name: cfg)
    monkeypatch.setitem(sys.modules, "timm", fake)
    stated = stated_eval(ModelConfig("timm:resnet50"))
    assert DataConfig().preprocess(224, stated) == Preprocess(224, 256, "bicubic")
    flags = DataConfig(resize=232, interpolation="bilinear")
    assert flags.preprocess(224, stated) == Preprocess(224, 232, "bilinear")
    assert DataConfig().preprocess(32, {}) == Preprocess(32, None, "bicubic")  # CIFAR: as ever


def test_train_headers_are_read_only_to_train(tmp_path):
    write_image_folder(tmp_path / "d", n_train=2, n_test=1)
    (tmp_path / "d" / "train" / "cat" / "bad.png").write_bytes(b"not a png")
    evaluated = load_dataset(tmp_path / "d", progress=False)
    assert len(evaluated.train) == 2 * len(CLASSES) + 1  # listed, not opened
    trained = load_dataset(tmp_path / "d", progress=False, train=True)  # the cached index, redone
    assert len(trained.train) == 2 * len(CLASSES)
    assert not any("bad.png" in name for name in trained.train.images.names)
