"""Property tests of camlens.cam over shapes, batch sizes, layers, targets and normalisations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from camlens.cam import METHODS, TOKEN_METHODS, Target, create
from camlens.model import ResNet18

pytestmark = pytest.mark.usefixtures("one_thread")


class SmallVGG(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(8, 4)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.features(images), 1).flatten(1))


torch.manual_seed(0)
MODELS = {
    "vgg": (SmallVGG(), ["features.0", "features.1", "features.3", "features.4"]),
    "resnet": (ResNet18(num_classes=4, width=4), ["layer2", "layer3", "layer4", "layer3.1.conv1"]),
}


def no_hooks(model: nn.Module) -> bool:
    return all(
        not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks)
        and not m._backward_pre_hooks
        for m in model.modules()
    )


@st.composite
def cases(draw):
    model_name = draw(st.sampled_from(sorted(MODELS)))
    model, names = MODELS[model_name]
    method = draw(st.sampled_from(sorted(set(METHODS) - TOKEN_METHODS)))
    if method == "cam":
        layers = ["features.4" if model_name == "vgg" else "layer4"]
    else:
        layers = draw(st.lists(st.sampled_from(names), min_size=1, max_size=2, unique=True))
    n = draw(st.integers(1, 4))
    height = draw(st.sampled_from([16, 24, 32]))
    width = draw(st.sampled_from([16, 20, 32]))
    kind = draw(st.sampled_from(["none", "int", "tensor", "callable", "scores"]))
    if kind == "scores" and METHODS[method].needs_indices:  # cam, scorecam and its kin
        kind = "tensor"
    normalize = draw(st.sampled_from(["minmax", "batch", "pair", "none"]))
    seed = draw(st.integers(0, 2**16))
    return model_name, method, layers, n, (height, width), kind, normalize, seed


def make_targets(kind: str, n: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    return {
        "none": None,
        "int": seed % 4,
        "tensor": torch.randint(0, 4, (n,), generator=gen),
        "callable": lambda logits: logits.argmin(1),
        "scores": lambda logits: logits[:, 1] - logits[:, 2],
    }[kind]


@settings(max_examples=60, deadline=None)
@given(cases())
def test_maps_are_finite_in_range_and_leave_no_trace(case):
    model_name, method, layers, n, size, kind, normalize, seed = case
    model = MODELS[model_name][0]
    model.train(seed % 2 == 0)
    flags = [m.training for m in model.modules()]
    images = torch.rand(n, 3, *size, generator=torch.Generator().manual_seed(seed))
    with create(method, model, layers, normalize=normalize) as cam:
        result = cam.explain(images, make_targets(kind, n, seed))
    assert result.maps.shape == (n, *size) and result.maps.dtype == torch.float32
    assert result.layer_maps.shape == (len(layers), n, *size)
    assert torch.isfinite(result.maps).all() and torch.isfinite(result.layer_maps).all()
    assert len(result.low_res) == len(layers) and result.raw_max.shape == (len(layers), n)
    for low, (h, w) in zip(result.low_res, result.resolutions, strict=True):
        assert low.shape == (n, h, w) and h <= size[0] and w <= size[1]
    if normalize == "none":
        assert (result.low_res[0] >= 0).all() or not METHODS[method].rectify  # eigen, kpca
    else:
        assert result.maps.min() >= 0 and result.maps.max() <= 1 + 1e-6
        # only a flat raw map (e.g. all zero: nothing for the target here) may show as zeros;
        # every other one reaches 1 ("minmax", "pair" of one set) or at least shows ("batch")
        signals = [low.amax((1, 2)) > low.amin((1, 2)) for low in result.low_res]  # L x (N,)
        if normalize != "minmax":  # raw / shared max, floored at 0: a map below 0 shows nothing
            # (Eigen-Grad-CAM, oriented by its share of the score, is below 0 where it lowers it)
            peaks = [low.amax((1, 2)) > 0 for low in result.low_res]
            signals = [s & p for s, p in zip(signals, peaks, strict=True)]
        shown = [*result.layer_maps, result.maps]
        # the combined map shows if any layer's does; RefineCAM's is its first layer's
        combined = signals[0] if method == "refinecam" else torch.stack(signals).any(0)
        for signal, maps in zip([*signals, combined], shown, strict=True):
            peaks = maps.amax((1, 2))
            assert torch.equal(peaks[~signal], torch.zeros_like(peaks[~signal]))
            if normalize == "batch":
                assert (peaks[signal] > 0).all() and (not signal.any() or peaks.max() == 1)
            else:
                torch.testing.assert_close(peaks[signal], torch.ones_like(peaks[signal]))
    assert no_hooks(model)
    assert [m.training for m in model.modules()] == flags


@settings(max_examples=15, deadline=None)
@given(
    method=st.sampled_from(["gradcam", "hirescam", "xgradcam", "cam"]),
    n=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_contrast_maps_are_signed_in_unit_range_and_antisymmetric(method, n, seed):
    model, _ = MODELS["resnet"]
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 32, 32, generator=gen)
    a, b = torch.randint(0, 4, (n,), generator=gen), torch.randint(0, 4, (n,), generator=gen)
    with create(method, model, "layer4") as cam:
        ab, ba = cam.explain_many(images, [Target(a, versus=b), Target(b, versus=a)])
    assert ab.signed and torch.isfinite(ab.maps).all()
    assert ab.maps.abs().max() <= 1 + 1e-6
    torch.testing.assert_close(ab.maps, -ba.maps, atol=1e-5, rtol=0)
    same = a == b
    assert torch.equal(ab.maps[same], torch.zeros_like(ab.maps[same]))
    # two different classes always differ somewhere: each such map reaches +1 or -1
    peaks = ab.maps[~same].abs().amax((1, 2))
    torch.testing.assert_close(peaks, torch.ones_like(peaks))


# layers that come after a ReLU, where every method's map of a score or of its negation shows
NON_NEGATIVE = {"vgg": ["features.1", "features.4"], "resnet": ["layer2", "layer3", "layer4"]}


@settings(max_examples=20, deadline=None)
@given(
    model_name=st.sampled_from(sorted(MODELS)),
    method=st.sampled_from(["gradcam", "hirescam", "xgradcam", "gradcam++", "layercam"]),
    n=st.integers(1, 4),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_a_score_or_its_negation_has_a_map(model_name, method, n, seed, data):
    """Where the target moves with the layer, its map or its negation's map is not all zero.

    Linear methods: the raw map of -s is minus that of s, so one of the two ReLU'd maps keeps
    what the other drops (on any layer). Grad-CAM++ and LayerCAM weigh positive gradients only:
    after a ReLU (A >= 0) s or -s has some, so one of the two maps is positive somewhere.
    """
    model, names = MODELS[model_name]
    model.eval()
    linear = method in ("gradcam", "hirescam", "xgradcam")
    layer = data.draw(st.sampled_from(names if linear else NON_NEGATIVE[model_name]))
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 32, 32, generator=gen)
    c = seed % 4
    with create(method, model, layer, normalize="none") as cam:
        plus, minus = cam.explain_many(
            images, [lambda logits: logits[:, c], lambda logits: -logits[:, c]]
        )
    plus, minus = plus.low_res[0], minus.low_res[0]
    assert (torch.maximum(plus.amax((1, 2)), minus.amax((1, 2))) > 0).all()
    if linear:  # ReLU(r) and ReLU(-r): never both positive at one place
        assert torch.equal(plus * minus, torch.zeros_like(plus))
