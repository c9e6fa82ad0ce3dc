"""Property tests of camlens.cam over shapes, batch sizes, layers, targets and normalisations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from camlens.cam import METHODS, Contrast, create
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
    method = draw(st.sampled_from(sorted(METHODS)))
    if method == "cam":
        layers = ["features.4" if model_name == "vgg" else "layer4"]
    else:
        layers = draw(st.lists(st.sampled_from(names), min_size=1, max_size=2, unique=True))
    n = draw(st.integers(1, 4))
    height = draw(st.sampled_from([16, 24, 32]))
    width = draw(st.sampled_from([16, 20, 32]))
    kind = draw(st.sampled_from(["none", "int", "tensor", "callable", "scores"]))
    if kind == "scores" and method in ("cam", "scorecam"):
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
    assert result.cams.shape == (n, *size) and result.cams.dtype == torch.float32
    assert result.layer_cams.shape == (len(layers), n, *size)
    assert torch.isfinite(result.cams).all() and torch.isfinite(result.layer_cams).all()
    assert len(result.low_res) == len(layers) and result.raw_max.shape == (len(layers), n)
    for low, (h, w) in zip(result.low_res, result.resolutions, strict=True):
        assert low.shape == (n, h, w) and h <= size[0] and w <= size[1]
    if normalize == "none":
        assert (result.low_res[0] >= 0).all() or method == "eigencam"
    else:
        assert result.cams.min() >= 0 and result.cams.max() <= 1 + 1e-6
    if normalize in ("minmax", "pair"):
        # every map is either stretched to reach 1 or was flat and came out as zeros
        peaks = result.cams.amax((1, 2))
        assert torch.all(((peaks - 1).abs() < 1e-5) | (peaks == 0))
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
        ab, ba = cam.explain_many(images, [Contrast(a, b), Contrast(b, a)])
    assert ab.signed and torch.isfinite(ab.cams).all()
    assert ab.cams.abs().max() <= 1 + 1e-6
    torch.testing.assert_close(ab.cams, -ba.cams, atol=1e-5, rtol=0)
    same = (a == b).nonzero().flatten()
    assert torch.equal(ab.cams[same], torch.zeros_like(ab.cams[same]))
