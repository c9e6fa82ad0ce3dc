"""camlens.metrics sanity check: the cascade, its similarity measures, and that it can fail."""

from __future__ import annotations

import math

import pytest
import torch

from camlens.cam import create
from camlens.metrics import (
    cascade_order,
    sanity_check,
    sanity_verdict,
    spearman,
    ssim,
)
from camlens.model import ResNet18
from conftest import edge_engine

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_resnet() -> ResNet18:
    torch.manual_seed(0)
    return ResNet18(num_classes=3, width=4).eval()


def images_and_targets(n: int = 6):
    g = torch.Generator().manual_seed(1)
    images = torch.rand(n, 3, 16, 16, generator=g)
    images[:, :, 4:10, 5:12] += 0.5  # some structure for an edge detector to find
    return images.clamp(0, 1), torch.arange(n) % 3


def gradcam(model):
    return create("gradcam", model, "layer3")


def test_cascade_order_runs_from_the_output_to_the_input():
    expected = ["linear"] + [f"layer{i}.{j}" for i in (4, 3, 2, 1) for j in (1, 0)]
    assert cascade_order(tiny_resnet()) == expected + ["bn1", "conv1"]


def test_spearman_uses_average_ranks_for_ties():
    a = torch.tensor([0.0, 0.0, 1.0, 2.0]).view(1, 2, 2)
    b = torch.tensor([0.0, 1.0, 2.0, 3.0]).view(1, 2, 2)
    # ranks (0.5, 0.5, 2, 3) against (0, 1, 2, 3): 4.5 / sqrt(4.5 * 5)
    assert spearman(a, b).item() == pytest.approx(3 / math.sqrt(10), abs=1e-6)
    assert spearman(b, b.flip(-1).flip(-2)).item() == pytest.approx(-1.0)
    assert spearman(b, torch.zeros_like(b)).item() == 0.0


def test_ssim_of_one_window_by_hand():
    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(1, 5, 5, generator=g), torch.rand(1, 5, 5, generator=g)
    a[0, 0, 0], a[0, 0, 1], b[0, 0, 0], b[0, 0, 1] = 0, 1, 0, 1  # already min-max scaled
    w = [[math.exp(-((i - 2) ** 2 + (j - 2) ** 2) / 4.5) for j in range(5)] for i in range(5)]
    total = sum(map(sum, w))
    x, y = a[0].tolist(), b[0].tolist()

    def mean(f):
        return sum(w[i][j] * f(i, j) for i in range(5) for j in range(5)) / total

    mx, my = mean(lambda i, j: x[i][j]), mean(lambda i, j: y[i][j])
    vx = mean(lambda i, j: (x[i][j] - mx) ** 2)
    vy = mean(lambda i, j: (y[i][j] - my) ** 2)
    cxy = mean(lambda i, j: (x[i][j] - mx) * (y[i][j] - my))
    c1, c2 = 0.01**2, 0.03**2
    expected = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    assert ssim(a, b).item() == pytest.approx(expected, abs=1e-5)
    assert ssim(a, a).item() == pytest.approx(1.0, abs=1e-6)


def test_an_edge_detector_stays_correlated_and_is_flagged():
    images, targets = images_and_targets()
    result = sanity_check(tiny_resnet(), images, targets, edge_engine)
    assert result.spearman.shape == (11, 6) and result.maps.shape == (12, 6, 16, 16)
    assert torch.allclose(result.spearman, torch.ones(11, 6), atol=1e-6)
    assert torch.allclose(result.ssim, torch.ones(11, 6), atol=1e-6)
    verdict = sanity_verdict(result)
    assert not verdict.passed and verdict.decorrelated_at is None
    assert verdict.state == "model-blind" and "class-blind" in verdict.failed


def test_gradcam_decorrelates_and_the_model_is_left_alone():
    model = tiny_resnet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, targets = images_and_targets()
    result = sanity_check(
        model, images, targets, gradcam, generator=torch.Generator().manual_seed(0)
    )
    informative = ~result.flat[0]  # a third of an untrained net's maps are flat: they count as 1
    assert result.spearman[-1, informative].mean() < 0.3 and result.ssim.mean(1)[-1] < 0.5
    verdict = sanity_verdict(result)
    assert verdict.passed and verdict.decorrelated_at is not None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    again = sanity_check(
        model, images, targets, gradcam, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(again.spearman, result.spearman)  # the same seed, the same cascade


def test_layers_can_be_named_and_unknown_ones_are_refused():
    images, targets = images_and_targets(2)
    result = sanity_check(tiny_resnet(), images, targets, gradcam, layers=["linear", "layer3"])
    assert result.steps == ("linear", "layer3") and result.spearman.shape == (2, 2)
    with pytest.raises(KeyError, match="no layer named 'layer9'"):
        sanity_check(tiny_resnet(), images, targets, gradcam, layers=["layer9"])
