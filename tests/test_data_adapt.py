"""The user's own data, adapted: a torchvision-style dataset written here (normalised by its
own transform), DataLoaders, numpy arrays, a camlens Dataset; and every bad input as one line."""

import numpy as np
import pytest
import torch
from torch.utils.data import ConcatDataset, DataLoader, Subset, TensorDataset

from camlens.data import DataError, Dataset, Split, as_dataset, from_user_data, read_normalization
from conftest import CIFAR10, Compose, ComposeV2, Normalize, NormalizeV2, ToTensor

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
CLASSES = ["cat", "dog", "ship"]


class TinyCIFAR(torch.utils.data.Dataset):
    """torchvision.datasets.CIFAR10's shape: .data (N, H, W, 3) uint8, .targets, .classes."""

    def __init__(self, n=23, size=8, transform=None, seed=0):
        rng = np.random.default_rng(seed)
        self.data = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        self.targets = rng.integers(0, len(CLASSES), n).tolist()
        self.classes = list(CLASSES)
        self.transform = transform
        self.reads = 0

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        self.reads += 1
        x = self.data[i]
        return (self.transform(x) if self.transform else x), self.targets[i]


def normalised():
    return TinyCIFAR(transform=Compose([ToTensor(), Normalize(MEAN, STD)]))


def truth(ds):
    return torch.from_numpy(ds.data).permute(0, 3, 1, 2), torch.tensor(ds.targets)


def gather(data):
    batches = list(data)
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]), batches


def test_normalize_read_from_a_compose_without_torchvision():
    assert read_normalization(Compose([ToTensor(), Normalize(MEAN, STD)])) == (MEAN, STD)
    assert read_normalization(Normalize(0.5, 0.25)) == ((0.5,) * 3, (0.25,) * 3)
    assert read_normalization(Compose([ToTensor()])) is None
    assert read_normalization(None) is None


@pytest.mark.parametrize("wrap", ["dataset", "loader", "subset"])
def test_normalised_torchvision_style_data_comes_back_as_its_pixels(wrap):
    ds = normalised()
    source = {
        "dataset": ds,
        "loader": DataLoader(ds, batch_size=5),
        "subset": DataLoader(Subset(ds, range(len(ds))), batch_size=5),
    }[wrap]
    data = from_user_data(source, batch_size=5)
    assert data.classes == tuple(CLASSES) and data.mean == MEAN and data.std == STD
    images, labels, batches = gather(data)
    pixels, want = truth(ds)
    assert [b[0].shape[0] for b in batches] == [5, 5, 5, 5, 3]  # streamed, batch by batch
    assert images.dtype == torch.float32 and images.shape == (23, 3, 8, 8)
    torch.testing.assert_close(images, pixels.float() / 255, atol=1e-5, rtol=0)
    assert labels.equal(want) and labels.dtype == torch.int64
    held = as_dataset(source, batch_size=5)
    assert held.test.images.equal(pixels) and held.test.labels.equal(want)  # uint8, exact
    assert held.classes == tuple(CLASSES) and len(held.train) == 0 and held.image_size == 8


class ApplyTransform(torch.utils.data.Dataset):
    """The wrapper users write to give a Subset its own transform: the dataset inside has none."""

    def __init__(self, dataset, transform):
        self.dataset, self.transform = dataset, transform

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        x, y = self.dataset[i]
        return self.transform(x), y


class Joint:  # what a VisionDataset's transforms= takes: a callable on (image, target)
    def __init__(self, transforms):
        self.transforms = transforms

    def __call__(self, x, y):
        return Compose(self.transforms)(x), y


def cifar(**transform):
    ds = TinyCIFAR()
    return CIFAR10(ds.data, ds.targets, CLASSES, **transform)


def steps():
    return [ToTensor(), Normalize(MEAN, STD)]


@pytest.mark.parametrize(
    "make, where",
    [
        (lambda: cifar(transform=Compose(steps())), "CIFAR10.transform"),
        (lambda: Subset(cifar(transform=Compose(steps())), range(23)), "CIFAR10.transform"),
        (
            lambda: ConcatDataset(
                [Subset(cifar(transform=Compose(steps())), r) for r in (range(9), range(9, 23))]
            ),
            "CIFAR10.transform",
        ),
        (  # torchvision.transforms.v2
            lambda: cifar(transform=ComposeV2([ToTensor(), NormalizeV2(MEAN, STD)])),
            "CIFAR10.transform",
        ),
        (  # the scriptable form torchvision suggests
            lambda: cifar(
                transform=Compose([ToTensor(), torch.nn.Sequential(NormalizeV2(MEAN, STD))])
            ),
            "CIFAR10.transform",
        ),
        (lambda: cifar(transforms=Joint(steps())), "CIFAR10.transforms"),
        (
            lambda: ApplyTransform(Subset(cifar(), range(23)), Compose(steps())),
            "ApplyTransform.transform",
        ),
    ],
    ids=["cifar", "subset", "concat", "v2", "sequential", "transforms=", "wrapper"],
)
def test_the_normalize_of_a_real_users_loader_is_found_and_said_in_one_line(make, where, capsys):
    data = from_user_data(DataLoader(make(), batch_size=5))
    said = capsys.readouterr().out
    assert data.mean == MEAN and data.std == STD and data.classes == tuple(CLASSES)
    assert said.count("\n") == 1 and f"read from the Normalize in {where}:" in said
    assert "mean (0.49, 0.48, 0.45) and std (0.25, 0.24, 0.26)" in said
    images, labels, _ = gather(data)
    pixels, want = truth(TinyCIFAR())
    torch.testing.assert_close(images, pixels.float() / 255, atol=1e-5, rtol=0)
    assert labels.equal(want)


def test_images_normalised_elsewhere_name_the_call_that_fixes_them():
    ds = normalised()
    images = torch.stack([ds[i][0] for i in range(len(ds))])  # (N, 3, H, W), normalised
    loader = DataLoader(TensorDataset(images, torch.tensor(ds.targets)), batch_size=5)
    with pytest.raises(DataError, match=r"pass camlens.from_user_data\(data, mean=") as excinfo:
        from_user_data(loader, classes=CLASSES)
    one_line(excinfo)
    data = from_user_data(loader, classes=CLASSES, mean=MEAN, std=STD)  # the fix it names
    torch.testing.assert_close(gather(data)[0], truth(ds)[0].float() / 255, atol=1e-5, rtol=0)


def test_only_the_first_batch_is_read_up_front():
    ds = normalised()
    data = from_user_data(ds, batch_size=4)
    assert ds.reads == 4  # checked at the call, not read whole
    assert len(data) == 23


def test_given_normalisation_and_classes_win(capsys):
    ds = TinyCIFAR(transform=Compose([ToTensor(), Normalize((0.5,) * 3, (0.5,) * 3)]))
    ds.transform.transforms[1] = Normalize(MEAN, STD)
    data = from_user_data(ds, mean=MEAN, std=STD, classes=["a", "b", "c"])
    assert data.classes == ("a", "b", "c")
    torch.testing.assert_close(gather(data)[0], truth(ds)[0].float() / 255, atol=1e-5, rtol=0)
    assert capsys.readouterr().out == ""  # named by the user: nothing to say


def test_plain_data_numpy_arrays_and_camlens_datasets():
    ds = TinyCIFAR()  # no transform: HWC uint8 arrays, as PIL-free torchvision would yield
    pixels, labels = truth(ds)
    for source in (ds, (ds.data, np.array(ds.targets)), (pixels.float() / 255, labels)):
        data = from_user_data(source, classes=CLASSES, batch_size=10)
        images, got, _ = gather(data)
        torch.testing.assert_close(images, pixels.float() / 255, atol=1e-6, rtol=0)
        assert got.equal(labels)
    assert from_user_data(ds.data, np.array(ds.targets), classes=3).classes == ("0", "1", "2")
    camlens_data = Dataset(
        Split(pixels[:0], labels[:0]), Split(pixels, labels), ("a", "b", "c"), "x", "y"
    )
    assert as_dataset(camlens_data) is camlens_data
    assert gather(from_user_data(camlens_data))[1].equal(labels)


def test_dict_batches_with_keys():
    ds = normalised()

    class Dicts(torch.utils.data.Dataset):
        classes = CLASSES

        def __len__(self):
            return len(ds)

        def __getitem__(self, i):
            x, y = ds[i]
            return {"img": x, "target": y}

    with pytest.raises(DataError, match=r"dict with keys \['img', 'target'\]: pass keys="):
        from_user_data(DataLoader(Dicts(), batch_size=4), mean=MEAN, std=STD)
    with pytest.raises(DataError, match="lacks key 'image'"):
        from_user_data(Dicts(), mean=MEAN, std=STD, keys=("image", "label"))
    data = from_user_data(
        DataLoader(Dicts(), batch_size=4), mean=MEAN, std=STD, keys=("img", "target")
    )
    torch.testing.assert_close(gather(data)[0], truth(ds)[0].float() / 255, atol=1e-5, rtol=0)


def one_line(excinfo):
    assert "\n" not in str(excinfo.value)
    return str(excinfo.value)


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: from_user_data(
                torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), classes=2
            ),
            r"no axis of 3 colour channels",
        ),
        (
            lambda: from_user_data(
                torch.rand(4, 8, 8), torch.zeros(4, dtype=torch.long), classes=2
            ),
            r"expected a batch \(B, 3, H, W\)",
        ),
        (
            lambda: from_user_data(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3]), classes=3),
            r"label 3 is outside the 3 classes",
        ),
        (
            lambda: from_user_data(torch.rand(4, 3, 8, 8), torch.tensor([0, -1, 2, 1]), classes=3),
            r"label -1 is outside",
        ),
        (
            lambda: from_user_data(torch.rand(4, 3, 8, 8), torch.eye(3)[[0, 1, 2, 0]], classes=3),
            r"one-hot labels: pass labels.argmax\(1\)",
        ),
        (
            lambda: from_user_data(
                torch.rand(4, 3, 8, 8), torch.zeros(3, dtype=torch.long), classes=3
            ),
            r"4 images but 3 labels",
        ),
        (
            lambda: from_user_data(
                torch.randn(4, 3, 8, 8) * 2, torch.zeros(4, dtype=torch.long), classes=3
            ),
            r"look normalised, but not by a Normalize in the dataset's transform; pass "
            r"camlens.from_user_data\(data, mean=\(r, g, b\), std=\(r, g, b\)\) in place",
        ),
        (
            lambda: from_user_data(normalised(), mean=(0.0,) * 3, std=(10.0,) * 3),
            r"after undoing mean .* pass camlens.from_user_data\(data, mean=.* with the mean",
        ),
        (
            lambda: from_user_data(
                ConcatDataset(
                    [normalised(), TinyCIFAR(transform=Compose([ToTensor(), Normalize(0.5, 0.5)]))]
                )
            ),
            r"the 2 datasets joined in the ConcatDataset are normalised differently",
        ),
        (lambda: from_user_data(DataLoader(normalised(), shuffle=True)), r"shuffle=False"),
        (
            lambda: from_user_data(DataLoader(normalised(), batch_size=4, drop_last=True)),
            r"drop_last=False",
        ),
        (
            lambda: from_user_data(x for x in [(torch.rand(1, 3, 8, 8), torch.zeros(1))]),
            r"can be read once",
        ),
        (lambda: from_user_data(Subset(TinyCIFAR(), [0]).dataset.data), r"images without labels"),
        (lambda: from_user_data([(torch.rand(3, 8, 8), 0)]), r"has no `classes`: pass classes="),
        (lambda: from_user_data(normalised(), mean=MEAN), r"mean= and std= together"),
        (
            lambda: from_user_data([(torch.rand(3, 8, 8), 0, "a.png")], classes=2),
            r"has 3 parts, not \(image, label\): pass keys=",
        ),
        (lambda: from_user_data(42), r"cannot read test data from a int"),
    ],
)
def test_bad_input_is_one_line_naming_the_fix(make, message):
    with pytest.raises(DataError, match=message) as excinfo:
        make()
    one_line(excinfo)


def test_a_later_batch_is_checked_as_it_is_read():
    ds = TinyCIFAR(n=10)
    ds.targets[9] = 7  # the last batch's label is out of range; the first batch is fine
    data = from_user_data(ds, classes=CLASSES, batch_size=4)
    with pytest.raises(DataError, match="label 7 is outside the 3 classes") as excinfo:
        list(data)
    one_line(excinfo)
    mixed = [(torch.rand(3, 8, 8), 0)] * 3 + [(torch.rand(3, 9, 9), 0)]
    with pytest.raises(DataError, match=r"images of \(9, 9\) after images of \(8, 8\)"):
        list(from_user_data(DataLoader(mixed, batch_size=3), classes=2))


def test_a_users_loader_is_written_to_disk_as_it_passes_never_joined():
    from camlens.data import ImageStore

    pixels = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(pixels.float() / 255, torch.arange(10) % 2), batch_size=4
    )
    held = as_dataset(loader, classes=2)
    # a memory-mapped store, not one tensor of every batch (the 30 GB of 50,000 photos)
    assert isinstance(held.test.images, ImageStore) and held.test.images.shape == (10, 3, 8, 8)
    assert torch.equal(held.test.images[torch.tensor([9, 0])], pixels[[9, 0]])
