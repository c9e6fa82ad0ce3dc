"""camlens.cam: known answers against plain per-image references, and the engine's contracts.

References are written here from the papers' formulas with autograd and loops, never taken
from the code under test or another library.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from camlens.cam import (
    CAM,
    ISCAM,
    KNOBS,
    KPCACAM,
    METHODS,
    SSCAM,
    TOKEN_METHODS,
    AblationCAM,
    CamConfig,
    EigenCAM,
    EigenGradCAM,
    FinerCAM,
    FullGrad,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    GuidedGradCAM,
    HiResCAM,
    ISKnobs,
    LayerCAM,
    RefineCAM,
    ScoreCAM,
    ScoreKnobs,
    ShapleyCAM,
    Similar,
    SmoothGradCAMPlusPlus,
    SmoothKnobs,
    SSKnobs,
    Target,
    XGradCAM,
    create,
    explain_pair,
    find_layer,
    normalize_maps,
)
from camlens.cam.methods import score_share_component_map
from camlens.model import ResNet18

ATOL = 1e-5
# methods whose maps are at the image's resolution
INPUT_RESOLUTION = {"fullgrad", "guidedgradcam"}


pytestmark = pytest.mark.usefixtures("one_thread")


class TinyVGG(nn.Module):
    """A VGG-style net with in-place ReLUs, as many real models have."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(16, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.features(images)
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


class ExpHeadNet(nn.Module):
    """stem (conv, ReLU: A >= 0) -> lift (1x1 conv: A signed) -> S = fc(GAP(relu(mix(.)))).

    S is piecewise linear in either layer's acts. The gradient reaches lift's negative
    activations too (through mix before any ReLU), so what a method does with them shows.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU())
        self.lift = nn.Conv2d(4, 4, 1, bias=False)  # no bias: activations of both signs
        self.mix = nn.Conv2d(4, 6, 1)
        self.fc = nn.Linear(6, 3)

    def head(self, acts: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.mix(acts)), 1).flatten(1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.lift(self.stem(images)))

    def acts(self, image: torch.Tensor, layer: str) -> torch.Tensor:
        """(3, H, W) -> (C, h, w) at `layer`, "stem" or "lift"."""
        with torch.no_grad():
            acts = self.stem(image[None])
            return (acts if layer == "stem" else self.lift(acts))[0]

    def rest(self, acts: torch.Tensor, layer: str) -> torch.Tensor:
        """(C, h, w) acts at `layer` -> (K,) logits."""
        return self.head(self.lift(acts[None]) if layer == "stem" else acts[None])[0]


def no_hooks(model: nn.Module) -> bool:
    return all(
        not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks)
        and not m._backward_pre_hooks
        for m in model.modules()
    )


def minmax(maps: torch.Tensor) -> torch.Tensor:
    lo = maps.amin((1, 2), keepdim=True)
    hi = maps.amax((1, 2), keepdim=True)
    return (maps - lo) / (hi - lo)


def up(maps: torch.Tensor, size: int = 32) -> torch.Tensor:
    return F.interpolate(maps[:, None], size=(size, size), mode="bilinear", align_corners=False)[
        :, 0
    ]


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """(N, ...) -> (N, P) ranks per row, tied values sharing their average rank: ranking ties
    by position would give two all-zero maps a perfect Spearman."""
    x = x.flatten(1)
    out = torch.empty(x.shape, dtype=torch.float64)
    for i, row in enumerate(x):
        _, inverse, counts = torch.unique(row, return_inverse=True, return_counts=True)
        ends = counts.cumsum(0).double()  # the last rank of each group of tied values
        out[i] = (ends - (counts.double() - 1) / 2)[inverse]
    return out


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row Spearman; NaN where a map is constant (it has no order to agree with)."""
    return pearson(average_ranks(a), average_ranks(b))


def resnet(norm: str = "batch", width: int = 8, seed: int = 0) -> ResNet18:
    torch.manual_seed(seed)
    model = ResNet18(num_classes=10, norm=norm, width=width).eval()
    with torch.no_grad():
        # positive class weights on the post-ReLU layer4 output: a class map that is not all zero
        model.linear.weight.copy_(torch.rand_like(model.linear.weight) - 0.2)
    return model


def resnet_acts(model: ResNet18, images: torch.Tensor, upto: str) -> torch.Tensor:
    """The ResNet's forward written out, stopping after stage `upto`."""
    x = (images - model.mean) / model.std
    x = F.relu(model.bn1(model.conv1(x)))
    for name in ("layer1", "layer2", "layer3", "layer4"):
        x = getattr(model, name)(x)
        if name == upto:
            return x
    raise ValueError(upto)


def resnet_rest(model: ResNet18, acts: torch.Tensor, after: str) -> torch.Tensor:
    x = acts
    if after == "layer3":
        x = model.layer4(x)
    return model.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


def naive_resnet(model, images, targets, layer, method="gradcam"):
    """Grad-CAM or HiResCAM one image at a time: autograd on that image alone, a channel loop."""
    maps = []
    for i in range(images.shape[0]):
        acts = resnet_acts(model, images[i : i + 1], layer).detach().requires_grad_()
        logits = resnet_rest(model, acts, layer)
        (grads,) = torch.autograd.grad(logits[0, int(targets[i])], acts)
        cam = torch.zeros(acts.shape[2:])
        for k in range(acts.shape[1]):
            # Grad-CAM: one weight per channel; HiResCAM: the gradient at each place
            weight = grads[0, k].mean() if method == "gradcam" else grads[0, k]
            cam += weight * acts[0, k].detach()
        maps.append(cam.clamp_min(0))
    return torch.stack(maps)


def naive_gradcam_vgg(model, images, targets, index):
    """Grad-CAM at features[index] with the ReLUs applied out of place."""
    maps = []
    for i in range(images.shape[0]):
        x = images[i : i + 1]
        acts = None
        for j, module in enumerate(model.features):
            x = F.relu(x) if isinstance(module, nn.ReLU) else module(x)
            if j == index:
                acts = x
        logits = model.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))
        (grads,) = torch.autograd.grad(logits[0, int(targets[i])], acts)
        weights = grads[0].mean((1, 2))
        maps.append(torch.einsum("c,chw->hw", weights, acts[0].detach()).clamp_min(0))
    return torch.stack(maps)


# -- known answers ---------------------------------------------------------------------------


@pytest.mark.parametrize("layer", ["layer3", "layer4"])
def test_gradcam_and_hirescam_equal_naive_per_image_on_resnet(layer):
    model = resnet()
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 3, 3, 7, 9])
    refs = {}
    for method in ("gradcam", "hirescam"):
        ref = naive_resnet(model, images, targets, layer, method)
        with create(method, model, layer) as cam:
            result = cam.explain(images, targets)
        assert ref.amax() > 0
        torch.testing.assert_close(result.low_res[0], ref, atol=ATOL, rtol=1e-4)
        torch.testing.assert_close(result.maps, minmax(up(ref)), atol=ATOL, rtol=0)
        refs[method] = ref
    if layer == "layer3":
        # layer4 feeds global pooling, so its gradient is constant over space and the two
        # methods agree there; at layer3 it is not, and a HiResCAM that averaged would fail
        assert (refs["hirescam"] - refs["gradcam"]).abs().amax() > 0.1 * refs["gradcam"].amax()


@pytest.mark.parametrize("index", [0, 1, 5, 6])
def test_gradcam_equals_naive_on_vgg_with_inplace_relu(index):
    torch.manual_seed(2)
    model = TinyVGG().eval()
    images = torch.rand(4, 3, 16, 16)
    targets = torch.tensor([1, 0, 4, 2])
    ref = naive_gradcam_vgg(model, images, targets, index)
    maps = GradCAM(model, layer=f"features.{index}").explain(images, targets, "none").low_res[0]
    # hooked on a conv that an in-place ReLU follows, acts are the conv's own output
    torch.testing.assert_close(maps, ref, atol=ATOL, rtol=1e-4)


def test_gradcam_equals_zhou_cam_and_hirescam_at_layer4():
    model = resnet(width=16)
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    targets = torch.tensor([2, 5, 5, 8])
    with torch.no_grad():
        acts = resnet_acts(model, images, "layer4")  # (N, C, 4, 4)
    weights = model.linear.weight[targets]  # (N, C)
    ref = torch.einsum("nc,nchw->nhw", weights, acts).clamp_min(0)
    assert (ref.amax((1, 2)) - ref.amin((1, 2)) > 0.1).all(), "the test needs non-flat maps"
    ref = minmax(up(ref))
    grad = GradCAM(model, "layer4")(images, targets)
    torch.testing.assert_close(grad, ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(HiResCAM(model, "layer4")(images, targets), grad, atol=ATOL, rtol=0)
    torch.testing.assert_close(CAM(model, "layer4")(images, targets), ref, atol=ATOL, rtol=0)


def exp_head_case():
    torch.manual_seed(4)
    model = ExpHeadNet().eval()
    with torch.no_grad():
        # sum_ab A_kab * g near 1, where Grad-CAM++'s alpha = 1 / (2 + sum_ab A_kab * g) feels it
        model.lift.weight.mul_(10)
        model.fc.weight.mul_(10)
    images = torch.rand(2, 3, 8, 8)
    targets = torch.tensor([0, 2])
    return model, images, targets


# "stem" is after a ReLU (A >= 0, the papers' case); "lift" a conv after it (A signed)
EXP_LAYERS = ["stem", "lift"]


def check_signed_case(acts: torch.Tensor, layer: str) -> None:
    """On the signed layer, some channel must have both signs, so |A| and A differ there."""
    if layer == "lift":
        total, mass = acts.sum((1, 2)).abs(), acts.abs().sum((1, 2))
        assert (total < 0.8 * mass).any(), "the test needs a channel of both signs"


def derivatives_of_exp_score(model, acts, target, layer):
    """dY/dA, d2Y/dA2 and d3Y/dA3 (diagonal) of Y = exp(S_c), element by element."""
    acts = acts.detach().requires_grad_()
    y = model.rest(acts, layer)[target].exp()
    (d1,) = torch.autograd.grad(y, acts, create_graph=True)
    d2 = torch.zeros_like(acts)
    d3 = torch.zeros_like(acts)
    for idx in np.ndindex(*acts.shape):
        (g2,) = torch.autograd.grad(d1[idx], acts, create_graph=True)
        d2[idx] = g2[idx]
        if g2[idx].requires_grad:
            (g3,) = torch.autograd.grad(g2[idx], acts, retain_graph=True)
            d3[idx] = g3[idx]
    return d1.detach(), d2.detach(), d3.detach(), y.detach()


def grads_of(model, acts, layer, a, b=None):
    """d(logit[a]) / d acts, or d(logit[a] - logit[b]), for one image's (C, h, w) acts."""
    acts = acts.clone().requires_grad_()
    logits = model.rest(acts, layer)
    (grads,) = torch.autograd.grad(logits[a] - (0 if b is None else logits[b]), acts)
    return grads


@pytest.mark.parametrize("layer", EXP_LAYERS)
def test_gradcam_plusplus_equals_eq19_with_exp_score(layer):
    model, images, targets = exp_head_case()
    ours = GradCAMPlusPlus(model, layer).explain(images, targets, "none").low_res[0]
    for i in range(images.shape[0]):
        acts = model.acts(images[i], layer)  # (C, h, w)
        check_signed_case(acts, layer)
        d1, d2, d3, y = derivatives_of_exp_score(model, acts, int(targets[i]), layer)
        cam = torch.zeros(acts.shape[1:])
        for k in range(acts.shape[0]):
            total = acts[k].abs().sum()  # the paper's sum of A, for A >= 0 (see GradCAMPlusPlus)
            weight = 0.0
            for a in range(acts.shape[1]):
                for b in range(acts.shape[2]):
                    denom = 2 * d2[k, a, b] + total * d3[k, a, b]
                    alpha = d2[k, a, b] / denom if denom != 0 else 0.0  # eq. 19
                    weight += alpha * max(float(d1[k, a, b]), 0.0)
            cam += weight * acts[k]
        ref = cam.clamp_min(0)
        assert ref.amax() > 0
        # the paper differentiates Y = exp(S); the engine uses S, which scales the map by 1/Y
        torch.testing.assert_close(ours[i] * y, ref, atol=ATOL, rtol=1e-4)


def eq19_reference(acts, d1, d2, d3):
    """Un-rectified eq. 19 map of one image from (C, h, w) derivatives, place by place."""
    cam = torch.zeros(acts.shape[1:])
    for k in range(acts.shape[0]):
        total = acts[k].abs().sum()  # the paper's sum of A, for A >= 0 (see GradCAMPlusPlus)
        weight = 0.0
        for a in range(acts.shape[1]):
            for b in range(acts.shape[2]):
                denom = 2 * d2[k, a, b] + total * d3[k, a, b]
                alpha = d2[k, a, b] / denom if denom > 0 else 0.0
                weight += alpha * max(float(d1[k, a, b]), 0.0)
        cam += weight * acts[k]
    return cam


@pytest.mark.parametrize("layer", EXP_LAYERS)
def test_smoothgradcam_plusplus_equals_eq19_of_averaged_derivatives(layer):
    model, images, targets = exp_head_case()
    samples, std, seed = 3, 0.3, 7
    config = CamConfig(knobs=SmoothKnobs(samples=samples, std=std, seed=seed))
    ours = SmoothGradCAMPlusPlus(model, layer, config).explain(images, targets, "none").low_res[0]
    # the documented noise: (S, 3, H, W) from a CPU generator seeded with SmoothKnobs.seed
    noise = torch.randn((samples, 3, 8, 8), generator=torch.Generator().manual_seed(seed)) * std
    for i in range(images.shape[0]):
        acts = model.acts(images[i], layer)  # the clean image's: the map weighs these
        check_signed_case(acts, layer)
        # per noisy copy, the derivatives of Y = exp(S) over Y (see SmoothGradCAMPlusPlus)
        copies = []
        for m in range(samples):
            d1, d2, d3, y = derivatives_of_exp_score(
                model, model.acts(images[i] + noise[m], layer), int(targets[i]), layer
            )
            copies.append((d1 / y, d2 / y, d3 / y))
        firsts = [c[0] for c in copies]
        spread = max(float((f - firsts[0]).abs().max()) for f in firsts)
        assert spread > 0.1 * float(firsts[0].abs().max()), "the test needs copies that differ"
        means = [sum(c[p] for c in copies) / samples for p in range(3)]
        ref = eq19_reference(acts, *means).clamp_min(0)
        assert ref.amax() > 0
        torch.testing.assert_close(ours[i], ref, atol=ATOL, rtol=1e-4)
    # without noise every copy is the image: Grad-CAM++ itself
    plain = GradCAMPlusPlus(model, layer).explain(images, targets, "none").low_res[0]
    still = SmoothGradCAMPlusPlus(model, layer, config, std=0.0)
    torch.testing.assert_close(still.explain(images, targets, "none").low_res[0], plain)


class _GivenNoise:
    """Stands in for torchcam's noise distribution: hands out camlens's documented noise."""

    def __init__(self, noise):
        self.copies = iter(noise)

    def sample(self, size):
        return next(self.copies).expand(size)


def _spearman(a, b):
    return float(spearman(a[None], b[None])[0])


@pytest.mark.parametrize("noisy", [False, True], ids=["no-noise", "default-noise"])
def test_smoothgradcam_plusplus_against_torchcam(noisy):
    """torchcam's SmoothGradCAMpp on the shipped model, layer4, fed camlens's own noise copies.

    No noise (std 0, 4 copies of the image): every copy is the image, so the maps must be the
    same; this checks camlens's alpha, torchcam's "corrected" numerator, against torchcam itself
    (the paper's 1st-derivative numerator is red here). Default noise (4 copies, std 0.075 =
    torchcam's 0.3 on normalised inputs, seed 0): two differences remain, ReLU of the mean
    gradient (camlens) vs of the last copy's, and the clean image's activations (camlens, as the
    paper) vs the last noisy copy's, which torchcam's activation hook keeps from its last pass.
    Their size on the first 8 sample images: Spearman 0.69-0.99 between the two maps, so they
    differ visibly; this test states that size (no equality is expected there).
    """
    torchcam_methods = pytest.importorskip("torchcam.methods")
    from camlens.data import load_dataset
    from camlens.model import load_checkpoint

    model, _ = load_checkpoint("shipped")
    images = load_dataset("sample").test.images[:8].float() / 255
    config = CamConfig(knobs=SmoothKnobs(samples=4, **({} if noisy else {"std": 0.0})))
    with SmoothGradCAMPlusPlus(model, "layer4", config) as cam:
        result = cam.explain(images, None, "none")  # the predicted classes
    ours, classes = result.low_res[0], result.logits.argmax(1)
    noise = (
        torch.randn(
            (4, *images.shape[1:]), generator=torch.Generator().manual_seed(config.knobs.seed)
        )
        * config.knobs.std
    )
    extractor = torchcam_methods.SmoothGradCAMpp(
        model, "layer4", num_samples=4, input_shape=tuple(images.shape[1:])
    )
    try:
        extractor._distrib = _GivenNoise(noise)
        logits = model(images)
        theirs = extractor(classes.tolist(), logits, normalized=False)[0].detach()
    finally:
        extractor.remove_hooks()
    assert ours.amax() > 0
    scale = ours.flatten(1).amax(1)[:, None, None]  # compare on each image's own scale
    rho = [_spearman(a, b) for a, b in zip(ours, theirs, strict=True)]
    if not noisy:
        # to 1e-3 of the map: torchcam adds eps = 1e-8 to denominators of ~1e-4 here
        torch.testing.assert_close(ours / scale, theirs / scale, atol=1e-3, rtol=0)
    else:
        assert min(rho) > 0.5 and max(rho) < 0.999, rho


def xgradcam_reference(acts, grads):
    """Un-rectified XGrad-CAM of one image; each place's share of |A| (see XGradCAM)."""
    cam = torch.zeros(acts.shape[1:])
    for k in range(acts.shape[0]):
        total = float(acts[k].abs().sum())
        weight = 0.0
        for a in range(acts.shape[1]):
            for b in range(acts.shape[2]):
                if total != 0:
                    weight += abs(float(acts[k, a, b])) / total * float(grads[k, a, b])
        cam += weight * acts[k]
    return cam


@pytest.mark.parametrize("layer", EXP_LAYERS)
def test_xgradcam_and_its_contrast_equal_the_formula(layer):
    model, images, targets = exp_head_case()
    versus = (targets + 1) % 3
    sets = [targets, versus, Target(targets, versus=versus)]
    results = XGradCAM(model, layer).explain_many(images, sets, "none")
    ours, contrast = results[0].low_res[0], results[2].low_res[0]
    for i in range(images.shape[0]):
        acts = model.acts(images[i], layer)
        check_signed_case(acts, layer)
        a, b = int(targets[i]), int(versus[i])
        ref = xgradcam_reference(acts, grads_of(model, acts, layer, a)).clamp_min(0)
        assert ref.amax() > 0
        torch.testing.assert_close(ours[i], ref, atol=ATOL, rtol=1e-4)
        # a contrast target is the signed map of logit[a] - logit[b], never rectified
        ref = xgradcam_reference(acts, grads_of(model, acts, layer, a, b))
        assert ref.abs().amax() > 0
        torch.testing.assert_close(contrast[i], ref, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("layer", EXP_LAYERS)
def test_layercam_equals_its_formula(layer):
    model, images, targets = exp_head_case()
    ours = LayerCAM(model, layer).explain(images, targets, "none").low_res[0]
    for i in range(images.shape[0]):
        acts = model.acts(images[i], layer)
        check_signed_case(acts, layer)
        grads = grads_of(model, acts, layer, int(targets[i]))
        # A keeps its sign: a positive gradient on a negative activation counts against
        ref = sum(grads[k].clamp_min(0) * acts[k] for k in range(acts.shape[0])).clamp_min(0)
        assert ref.amax() > 0
        torch.testing.assert_close(ours[i], ref, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("layer", EXP_LAYERS)
def test_gradcam_elementwise_equals_its_formula(layer):
    model, images, targets = exp_head_case()
    ours = GradCAMElementWise(model, layer).explain(images, targets, "none").low_res[0]
    for i in range(images.shape[0]):
        acts = model.acts(images[i], layer)
        check_signed_case(acts, layer)
        grads = grads_of(model, acts, layer, int(targets[i]))
        ref = torch.zeros(acts.shape[1:])
        for k in range(acts.shape[0]):
            ref += (grads[k] * acts[k]).clamp_min(0)  # each channel rectified on its own
        # HiResCAM rectifies the sum: they differ where channels count against each other
        hires = sum(grads[k] * acts[k] for k in range(acts.shape[0])).clamp_min(0)
        assert (ref - hires).abs().amax() > 0.1 * ref.amax()
        torch.testing.assert_close(ours[i], ref, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("layer", EXP_LAYERS)
def test_eigengradcam_equals_first_singular_vector_of_grads_times_acts(layer):
    model, images, targets = exp_head_case()
    ours = EigenGradCAM(model, layer).explain(images, targets, "none").low_res[0]
    eigen = EigenCAM(model, layer).explain(images, normalize="none").low_res[0]
    for i in range(images.shape[0]):
        acts = model.acts(images[i], layer)
        grads = grads_of(model, acts, layer, int(targets[i]))
        c, h, w = acts.shape
        product = (grads * acts).double().numpy().reshape(c, h * w).T  # (hw, C), not centred
        _, singular, vt = np.linalg.svd(product, full_matrices=False)
        assert singular[0] > 1.05 * singular[1], "the test needs a clear first component"
        proj = product @ vt[0]
        proj = proj if vt[0].sum() >= 0 else -proj  # the sign of the component's score share
        ref = torch.tensor(proj.reshape(h, w), dtype=torch.float32)
        assert (ref - eigen[i]).abs().amax() > 0.1 * ref.abs().amax(), "Eigen-CAM's map differs"
        torch.testing.assert_close(ours[i], ref, atol=ATOL, rtol=1e-4)


def test_eigengradcam_shows_where_the_component_raises_the_score_under_a_negative_share():
    """Planted: grads x acts = u v^T with 1'u > 0 but 1'v < 0, so the component's share of the
    score s1 (1'u)(1'v) is negative and each place's share is u_p (1'v): bright must be there,
    where u < 0. A map oriented to sum >= 0 would light up u > 0, where the score falls."""
    u = torch.tensor([3.0, 1.0, -1.0, 0.5])  # places (h, w) = (2, 2)
    v = torch.tensor([-1.0, -1.0, 0.5])  # channels
    product = (u[:, None] * v[None, :]).T.reshape(1, 3, 2, 2)  # (hw, C) -> (1, C, h, w)
    place_share = (u * v.sum()).view(2, 2)  # what each place adds to sum(grads x acts)
    ours = score_share_component_map(product)[0]
    expected = place_share * v.norm() / v.sum().abs()  # s1 u1 = u |v|, oriented by the share
    torch.testing.assert_close(ours, expected)
    assert ours.argmax() == place_share.argmax() and ours.sum() < 0
    torch.testing.assert_close(score_share_component_map(-product)[0], -expected)


def test_eigencam_equals_first_singular_vector_projection():
    torch.manual_seed(5)
    model = TinyVGG().eval()
    images = torch.rand(3, 3, 16, 16)
    ours = EigenCAM(model, "features.6").explain(images).maps
    with torch.no_grad():
        acts = model.features(images).numpy().astype(np.float64)  # (N, C, h, w)
    for i in range(images.shape[0]):
        a = acts[i].reshape(acts.shape[1], -1).T  # (hw, C)
        _, _, vt = np.linalg.svd(a, full_matrices=False)
        proj = a @ vt[0]
        proj = proj if proj.sum() >= 0 else -proj
        ref = torch.tensor(proj.reshape(acts.shape[2:]), dtype=torch.float32)
        torch.testing.assert_close(ours[i], minmax(up(ref[None], 16))[0], atol=1e-4, rtol=0)


def scorecam_case():
    """TinyVGG whose features.6 has a constant channel 0 (0.5 everywhere): flat, not zero."""
    torch.manual_seed(6)
    model = TinyVGG().eval()
    with torch.no_grad():
        model.features[5].weight[0] = 0.0
        model.features[5].bias[0] = 0.5
    return model, torch.rand(2, 3, 16, 16)


def test_scorecam_equals_per_channel_loop():
    model, images = scorecam_case()
    targets = torch.tensor([3, 1])
    ours = ScoreCAM(model, "features.6", batch=7).explain(images, targets, "none")
    with torch.no_grad():
        acts = model.features(images)  # (N, C, 8, 8)
        # Definition 2's baseline X_b: the all-zero image
        baseline = model(torch.zeros(1, 3, 16, 16)).softmax(1)[0]
        assert baseline[targets].min() > 0.05, "the test needs a baseline score that matters"
        for i in range(images.shape[0]):
            cam = torch.zeros(acts.shape[2:])
            flat = 0
            for k in range(acts.shape[1]):
                if acts[i, k].max() == acts[i, k].min():
                    flat += int(acts[i, k].max() > 0)
                    continue  # no region to keep: the authors' code skips it
                mask = up(acts[i, k][None], 16)[0]
                mask = (mask - mask.min()) / (mask.max() - mask.min())
                prob = model(images[i : i + 1] * mask).softmax(1)[0, int(targets[i])]
                cam += (prob - baseline[int(targets[i])]) * acts[i, k]
            assert flat > 0, "the test needs a flat channel that is not zero"
            ref = cam.clamp_min(0)
            assert ref.amax() > 0
            torch.testing.assert_close(ours.low_res[0][i], ref, atol=ATOL, rtol=1e-4)


def test_scorecam_top_k_ranks_like_full():
    model = resnet(width=16)
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    full = ScoreCAM(model, "layer4", batch=128).explain(images)
    fast = ScoreCAM(model, "layer4", batch=128, top_k=48).explain(images)
    assert (spearman(full.maps, fast.maps) > 0.8).all()


def test_contrast_is_signed_difference_of_unrectified_maps():
    model = resnet()
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    labels = torch.tensor([1, 2, 3, 4])
    with torch.no_grad():
        acts = resnet_acts(model, images, "layer4")
        preds = model(images).argmax(1)
    w = model.linear.weight
    ref = torch.einsum("nc,nchw->nhw", w[preds] - w[labels], acts) / 16  # GAP: 1/hw per cell
    for method in ("gradcam", "hirescam", "xgradcam", "cam"):
        pair = explain_pair(model, images, labels, method=method, normalize="none")
        assert pair.contrast.signed and not pair.pred.signed
        if method != "xgradcam":
            scale = 16 if method == "cam" else 1
            torch.testing.assert_close(pair.contrast.low_res[0], ref * scale, atol=ATOL, rtol=1e-4)
    pair = explain_pair(model, images, labels)
    contrast = pair.contrast.maps
    assert contrast.min() < 0 < contrast.max()
    assert torch.allclose(contrast.abs().amax((1, 2)), torch.ones(4))
    scale = up(ref).abs().amax((1, 2), keepdim=True)
    torch.testing.assert_close(contrast, up(ref) / scale, atol=ATOL, rtol=0)
    # the same map from one backward of logit[pred] - logit[label]
    alone = GradCAM(model, "layer4").explain(images, Target(preds, versus=labels))
    torch.testing.assert_close(alone.maps, contrast, atol=ATOL, rtol=0)
    # indices None is the prediction; a Target without versus is a plain target set
    argmax = GradCAM(model, "layer4").explain(images, Target(versus=labels))
    torch.testing.assert_close(argmax.maps, contrast, atol=ATOL, rtol=0)
    plain = GradCAM(model, "layer4").explain(images, Target(labels))
    assert not plain.signed
    torch.testing.assert_close(plain.maps, GradCAM(model, "layer4")(images, labels), atol=0, rtol=0)


# -- contracts over every method ----------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(set(METHODS) - TOKEN_METHODS))
@pytest.mark.parametrize("model_name", ["resnet", "vgg"])
def test_method_contract(method, model_name):
    if model_name == "resnet":
        model, layer, size = resnet(width=4), "layer4", 32
    else:
        torch.manual_seed(9)
        model, layer, size = TinyVGG(), "features.5", 16
    model.train()
    model.layer1.eval() if model_name == "resnet" else model.features[0].eval()
    flags = [m.training for m in model.modules()]
    grad_flags = [p.requires_grad for p in model.parameters()]
    images = torch.rand(3, 3, size, size)
    with create(method, model, layer) as cam:
        result = cam.explain(images)
    assert result.maps.shape == (3, size, size) and result.maps.dtype == torch.float32
    assert torch.isfinite(result.maps).all()
    assert result.maps.min() >= 0 and result.maps.max() <= 1
    assert torch.equal(result.targets, result.logits.argmax(1))
    assert result.method == method and result.layers == (layer,)
    assert not result.maps.requires_grad and result.low_res[0].grad_fn is None
    assert no_hooks(model)
    assert [m.training for m in model.modules()] == flags
    assert [p.requires_grad for p in model.parameters()] == grad_flags
    assert all(p.grad is None for p in model.parameters()), "no parameter .grad may be written"


@pytest.mark.layout
@pytest.mark.parametrize("method", sorted(set(METHODS) - TOKEN_METHODS))
@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_batch_invariance(method, norm):
    model = resnet(norm=norm, width=4)
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(10))
    targets = torch.tensor([0, 1, 2, 3, 4])
    layer = "layer4" if method == "cam" else "layer3"  # CAM needs the layer before GAP
    cam = create(method, model, layer)
    together = cam(images, targets)
    others = torch.rand(3, 3, 32, 32)
    mixed = cam(torch.cat([images[2:4], others]), torch.tensor([2, 3, 9, 9, 9]))
    torch.testing.assert_close(mixed[:2], together[2:4], atol=1e-4, rtol=0)
    torch.testing.assert_close(cam(images[4:], targets[4:]), together[4:], atol=1e-4, rtol=0)
    chunked = create(method, model, layer, batch_size=2)(images, targets)
    torch.testing.assert_close(chunked, together, atol=1e-4, rtol=0)


class Exploding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = TinyVGG()

    def forward(self, images):
        self.body(images)
        raise RuntimeError("boom")


@pytest.mark.parametrize("method", sorted(set(METHODS) - TOKEN_METHODS))
def test_hooks_and_flags_restored_after_errors(method):
    torch.manual_seed(11)
    model = TinyVGG().train()
    model.features[2].eval()
    flags = [m.training for m in model.modules()]
    images = torch.rand(2, 3, 16, 16)
    cam = create(method, model, "features.3")
    with pytest.raises(ValueError, match=r"class indices in \[0, 5\)"):
        cam(images, torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="3 entries but the batch has 2"):
        cam(images, torch.tensor([0, 1, 2]))
    assert no_hooks(model) and [m.training for m in model.modules()] == flags
    exploding = Exploding().train()
    flags = [m.training for m in exploding.modules()]
    with (
        pytest.raises(RuntimeError, match="boom"),
        create(method, exploding, "body.features.3") as c,
    ):
        c(images)
    assert no_hooks(exploding) and [m.training for m in exploding.modules()] == flags
    assert torch.is_grad_enabled()


def test_eval_mode_during_call():
    model = TinyVGG().train()
    seen = []
    handle = model.features[0].register_forward_pre_hook(lambda m, i: seen.append(m.training))
    try:
        GradCAM(model, "features.3")(torch.rand(1, 3, 16, 16))
    finally:
        handle.remove()
    assert seen == [False] and model.training


# -- targets, normalisation, layers ---------------------------------------------------------


def test_target_forms_agree():
    torch.manual_seed(12)
    model = TinyVGG().eval()
    images = torch.rand(3, 3, 16, 16)
    cam = GradCAM(model, "features.5")
    threes = cam(images, torch.tensor([3, 3, 3]))
    torch.testing.assert_close(cam(images, 3), threes)
    torch.testing.assert_close(cam(images, [3, 3, 3]), threes)
    torch.testing.assert_close(cam(images, lambda logits: logits[:, 3]), threes)
    torch.testing.assert_close(cam(images, lambda logits: logits.argmin(1) * 0 + 3), threes)
    preds = model(images).argmax(1)
    torch.testing.assert_close(cam(images), cam(images, preds))
    with pytest.raises(TypeError, match="integer class indices"):
        cam(images, torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match=r"return shape \(3,\)"):
        cam(images, lambda logits: logits)
    with pytest.raises(ValueError, match="contrast targets .* need a method linear"):
        GradCAMPlusPlus(model, "features.5")(images, Target(preds, versus=preds))
    with pytest.raises(ValueError, match="contrast targets .* need a method linear"):
        ScoreCAM(model, "features.5")(images, Target(preds, versus=preds))


def count_forwards(model):
    calls = []
    handle = model.register_forward_pre_hook(lambda m, i: calls.append(i[0].shape[0]))
    return calls, handle


# methods with extra forward passes (Score-CAM and its variants, Ablation-CAM) are left out
EXTRA_PASSES = {"scorecam", "cam", "sscam", "iscam", "ablationcam"}


@pytest.mark.parametrize("method", sorted(set(METHODS) - EXTRA_PASSES - TOKEN_METHODS))
def test_many_target_sets_and_layers_share_one_forward(method):
    model = resnet(width=4)
    images = torch.rand(4, 3, 32, 32)
    labels = torch.tensor([1, 2, 3, 4])
    calls, handle = count_forwards(model)
    try:
        with create(method, model, ["layer3", "layer4"]) as cam:
            pred, true = cam.explain_many(images, [None, labels])
    finally:
        handle.remove()
    # SmoothGrad-CAM++'s noisy copies ride in the same forward pass
    copies = cam.knobs.samples if method == "smoothgradcam++" else 0
    assert calls == [4 * (1 + copies)]
    # input-resolution methods read their maps at the image's size
    sizes = ((32, 32),) * 2 if method in INPUT_RESOLUTION else ((8, 8), (4, 4))
    assert pred.resolutions == sizes and pred.layer_maps.shape == (2, 4, 32, 32)
    # RefineCAM's first layer is refined by the second: only the last one stands alone
    alone = ("layer4",) if method == "refinecam" else ("layer3", "layer4")
    for i, layer in enumerate(("layer3", "layer4")):
        if layer not in alone:
            continue
        single = create(method, model, layer)
        torch.testing.assert_close(pred.layer(layer), single(images), atol=ATOL, rtol=0)
        torch.testing.assert_close(true.layer_maps[i], single(images, labels), atol=ATOL, rtol=0)
    combined = pred.layer_maps[0] if method == "refinecam" else minmax(pred.layer_maps.mean(0))
    torch.testing.assert_close(pred.maps, combined, atol=ATOL, rtol=0)


def test_scorecam_target_sets_share_masked_passes():
    model, images = scorecam_case()
    with torch.no_grad():
        acts = model.features(images)
    scored = int((acts.amax((2, 3)) > acts.amin((2, 3))).sum())  # flat channels cost no pass
    assert scored < 2 * 16
    calls, handle = count_forwards(model)
    try:
        ScoreCAM(model, "features.6", batch=10).explain_many(images, [None, 1, 2])
    finally:
        handle.remove()
    # the images, the all-zero baseline, then the masked images of every set at once
    assert calls == [2, 1] + [10] * (scored // 10) + [scored % 10] * (scored % 10 > 0)


class PositiveHead(nn.Module):
    """acts = conv(images) with positive weights and no bias: > 0 for positive images. Class 1's
    row is 0.7 x class 0's, so its Grad-CAM map is 0.7 x class 0's and neither map reaches 0."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(14)
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.fc = nn.Linear(4, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.abs_()
            self.fc.weight[0] = torch.rand(4) + 0.1
            self.fc.weight[1] = 0.7 * self.fc.weight[0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.conv(images), 1).flatten(1))


def test_pair_and_batch_scales_keep_the_ratio_of_raw_peaks():
    model = PositiveHead().eval()
    images = 0.1 + torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(14))
    cam = GradCAM(model, "conv")
    raw = cam.explain(images, 0, normalize="none")
    assert (raw.maps.amin((1, 2)) > 0.2 * raw.maps.amax((1, 2))).all(), "maps without zeros"
    torch.testing.assert_close(raw.raw_max[0], raw.low_res[0].amax((1, 2)))
    pred, true = cam.explain_many(images, [None, 1], normalize="pair")
    assert pred.targets.tolist() == [0, 0, 0]
    torch.testing.assert_close(true.raw_max / pred.raw_max, torch.full((1, 3), 0.7))
    torch.testing.assert_close(pred.maps.amax((1, 2)), torch.ones(3), atol=ATOL, rtol=0)
    torch.testing.assert_close(true.maps.amax((1, 2)), torch.full((3,), 0.7), atol=ATOL, rtol=0)
    peak = raw.maps.amax((1, 2), keepdim=True)
    torch.testing.assert_close(pred.maps, raw.maps / peak, atol=ATOL, rtol=0)
    torch.testing.assert_close(true.maps, 0.7 * raw.maps / peak, atol=ATOL, rtol=0)
    # "batch": the same with one scale across images; the maps are linear in the image
    dimmer = torch.cat([images[:1], 0.7 * images[:1]])
    batch = cam.explain(dimmer, 0, normalize="batch").maps
    torch.testing.assert_close(batch.amax((1, 2)), torch.tensor([1.0, 0.7]), atol=ATOL, rtol=0)
    torch.testing.assert_close(batch[0], raw.maps[0] / peak[0], atol=ATOL, rtol=0)
    # "minmax" stays per map: each spans [0, 1]
    minmax_maps = cam.explain(images, 1).maps
    torch.testing.assert_close(minmax_maps.amax((1, 2)), torch.ones(3))
    torch.testing.assert_close(minmax_maps.amin((1, 2)), torch.zeros(3))


def test_pair_scale_on_maps_with_zeros_and_flat_maps():
    model = resnet()
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(14))
    labels = torch.tensor([0, 1, 2, 3])
    cam = GradCAM(model, "layer3")
    pred, true = cam.explain_many(images, [None, labels], normalize="pair")
    raw_pred, raw_true = cam.explain_many(images, [None, labels], normalize="none")
    scale = torch.maximum(raw_pred.maps.amax((1, 2)), raw_true.maps.amax((1, 2)))[:, None, None]
    assert (raw_true.maps.amax((1, 2)) < 0.9 * scale[:, 0, 0]).any(), "the test needs a weak map"
    torch.testing.assert_close(pred.maps, raw_pred.maps / scale, atol=ATOL, rtol=0)
    torch.testing.assert_close(true.maps, raw_true.maps / scale, atol=ATOL, rtol=0)
    # a constant map shows as zeros and sets no scale; an all-zero group stays zeros, not NaN
    varied = torch.rand(2, 4, 4) + 0.1
    flat = torch.full((2, 4, 4), 5.0)
    flat_out, varied_out = normalize_maps([flat, varied], "pair", signed=False)
    assert torch.equal(flat_out, torch.zeros_like(flat))
    torch.testing.assert_close(varied_out.amax((1, 2)), torch.ones(2))
    for mode in ("pair", "batch", "minmax"):
        zeros = normalize_maps([torch.zeros(2, 4, 4), flat], mode, signed=False)
        assert all(torch.equal(z, torch.zeros(2, 4, 4)) for z in zeros), mode


def test_constant_and_zero_maps_are_zeros():
    model = TinyVGG().eval()
    with torch.no_grad():
        model.classifier.weight.zero_()  # every gradient is zero
    images = torch.rand(2, 3, 16, 16)
    for method in sorted(
        set(METHODS) - {"scorecam", "eigencam", "cam", "kpcacam"} - TOKEN_METHODS
    ):  # class maps
        maps = create(method, model, "features.5")(images)
        assert torch.equal(maps, torch.zeros_like(maps)), method
    flat = nn.Sequential(nn.Conv2d(3, 2, 1), nn.Flatten(2), nn.Unflatten(2, (16, 16)))
    with torch.no_grad():
        flat[0].weight.zero_()
        flat[0].bias.fill_(1.0)  # a constant activation map
    model = nn.Sequential(flat, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3))
    for method in sorted(set(METHODS) - TOKEN_METHODS):
        maps = create(method, model, "0")(images)
        assert torch.equal(maps, torch.zeros_like(maps)), method


def test_frozen_parameters_and_no_grad_context():
    model = resnet(width=4)
    images = torch.rand(3, 3, 32, 32)
    expected = GradCAM(model, "layer3")(images)
    for p in model.parameters():
        p.requires_grad_(False)
    torch.testing.assert_close(GradCAM(model, "layer3")(images), expected)
    assert not any(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        inside = GradCAM(model, "layer3")(images)
        assert not torch.is_grad_enabled()
    torch.testing.assert_close(inside, expected)


def test_inference_mode_is_a_clear_error():
    model = TinyVGG().eval()
    with torch.inference_mode():
        images = torch.rand(2, 3, 16, 16)
    with pytest.raises(RuntimeError, match="inference-mode tensors"):
        GradCAM(model, "features.5")(images)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        GradCAM(model, "features.5")(images)
    assert no_hooks(model)
    # no gradients needed: Eigen-CAM still runs
    assert EigenCAM(model, "features.5")(images).shape == (2, 16, 16)


def test_bf16_autocast_gives_float32_maps_close_to_fp32():
    model = resnet(width=8)
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(15))
    fp32 = GradCAM(model, "layer4")(images)
    bf16 = GradCAM(model, "layer4", precision="bf16")(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outer = GradCAM(model, "layer4")(images)
    for maps in (bf16, outer):
        assert maps.dtype == torch.float32 and torch.isfinite(maps).all()
        assert (pearson(maps, fp32) > 0.95).all()


def test_layers_by_name_module_and_errors():
    model = resnet(width=4)
    images = torch.rand(2, 3, 32, 32)
    by_module = GradCAM(model, model.layer4[1].conv2).explain(images)
    assert by_module.layers == ("layer4.1.conv2",) and by_module.resolutions == ((4, 4),)
    by_name = GradCAM(model, "layer4.1.conv2")(images)
    torch.testing.assert_close(by_module.maps, by_name)
    with pytest.raises(KeyError, match="valid names: .*layer4"):
        GradCAM(model, "layer5")
    with pytest.raises(KeyError, match="not a submodule"):
        GradCAM(model, nn.Conv2d(1, 1, 1))
    assert find_layer(model, "layer3.0") is model.layer3[0]
    with pytest.raises(ValueError, match="unknown normalize"):
        GradCAM(model, "layer4", normalize="zscore")
    with pytest.raises(ValueError, match="^gradcam reads no knob 'colour'"):
        GradCAM(model, "layer4", config=CamConfig(), colour="red")
    cam = GradCAM(model, "layer4")
    cam.close()
    with pytest.raises(RuntimeError, match="closed"):
        cam(images)


def test_memory_stays_flat_across_batches():
    model = resnet(width=4)
    cam = GradCAM(model, ["layer3", "layer4"])
    images = torch.rand(8, 3, 32, 32)

    def live_tensors():
        gc.collect()
        # type() rather than isinstance(): the latter wakes deprecated lazy torch objects
        return sum(type(o) is torch.Tensor for o in gc.get_objects())

    for _ in range(2):
        result = cam.explain_pair(images, torch.zeros(8, dtype=torch.long))
    before = live_tensors()  # counts the tensors of the one result held
    for _ in range(10):
        result = cam.explain_pair(images, torch.zeros(8, dtype=torch.long))
    assert live_tensors() <= before + 2
    assert result.pred.maps.grad_fn is None and result.contrast.low_res[1].grad_fn is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", sorted(set(METHODS) - TOKEN_METHODS))
def test_cuda_matches_cpu_and_bf16_autocast(method):
    model = resnet(width=8)
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(16))
    layer = "layer4" if method == "cam" else "layer3"
    cpu = create(method, model, layer)(images)
    model.cuda()
    gpu = create(method, model, layer)(images.cuda())
    assert gpu.device.type == "cuda"
    # TF32 is off inside the engine (cam/precision.py), whatever PyTorch's default: what is
    # left is the order of fp32 sums in cuDNN against oneDNN (benchmarks/cuda_parity.py)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-3, rtol=0)
    half = create(method, model, layer, precision="bf16")(images.cuda())
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    assert (pearson(half.cpu(), cpu) > 0.95).all()


# -- Finer-CAM, RefineCAM, FullGrad, Guided Grad-CAM ---------------------------------------


def trained_like_resnet(seed: int = 20) -> ResNet18:
    """resnet() with batch-norm statistics and shifts that are not the identity's, so that
    batch norm's implicit biases (FullGrad) and the ReLUs' on/off patterns matter."""
    model = resnet(width=4, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(0.3 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
                m.bias.copy_(0.2 * torch.randn(c, generator=gen))
    return model


@pytest.mark.parametrize("layer", ["layer3", "layer4"])
def test_finercam_equals_gradcam_of_the_weighted_similar_class_score(layer):
    model = resnet()
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(21))
    k, gamma = 3, 0.6
    ours = FinerCAM(model, layer, k=k, gamma=gamma).explain(images, None, "none")
    for i in range(images.shape[0]):
        acts = resnet_acts(model, images[i : i + 1], layer).detach().requires_grad_()
        logits = resnet_rest(model, acts, layer)[0]
        c = int(logits.argmax())
        # the k other classes whose logits are nearest y_c, weighted by their renormalised
        # softmax probabilities (constants), as the authors' FinerWeightedTarget
        gaps = (logits.detach() - logits[c].detach()).abs().tolist()
        order = sorted((j for j in range(10) if j != c), key=lambda j: gaps[j])
        nearest = order[:k]
        probs = logits.detach().softmax(0)[nearest]
        weights = probs / probs.sum()
        score = logits[c] - gamma * sum(
            w * logits[j] for w, j in zip(weights, nearest, strict=True)
        )
        (grads,) = torch.autograd.grad(score, acts)
        cam = torch.zeros(acts.shape[2:])
        for ch in range(acts.shape[1]):
            cam += grads[0, ch].mean() * acts[0, ch].detach()
        ref = cam.clamp_min(0)
        assert ref.amax() > 0
        assert ours.versus[i].tolist() == nearest
        torch.testing.assert_close(ours.low_res[0][i], ref, atol=ATOL, rtol=1e-4)
    assert not ours.signed
    # one nearest class at full strength, signed: Target(pred, versus=label)'s own mechanism
    with torch.no_grad():
        logits = model(images)
    preds = logits.argmax(1)
    nearest = (logits - logits.gather(1, preds[:, None])).abs().scatter(1, preds[:, None], 1e9)
    # the same classes given as an (N, k) tensor: the same weights, the same map
    given = Target(preds, versus=ours.versus, weight=gamma, signed=False)
    again = GradCAM(model, layer).explain(images, given, "none")
    torch.testing.assert_close(again.low_res[0], ours.low_res[0], atol=ATOL, rtol=1e-4)
    one = GradCAM(model, layer).explain(images, Target(versus=Similar(1)), "none")
    plain = GradCAM(model, layer).explain(images, Target(preds, versus=nearest.argmin(1)), "none")
    torch.testing.assert_close(one.low_res[0], plain.low_res[0], atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("model_name", ["resnet", "vgg"])
def test_refinecam_multiplies_scaled_layer_maps_at_the_finest_shape(model_name):
    if model_name == "resnet":
        model, layers, size = resnet(), ["layer3", "layer4"], 32
    else:
        torch.manual_seed(22)
        model, layers, size = TinyVGG().eval(), ["features.3", "features.5"], 16
    images = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(22))
    targets = torch.tensor([1, 2, 3])
    ours = RefineCAM(model, layers).explain(images, targets, "none")
    base = [
        GradCAMPlusPlus(model, layer).explain(images, targets, "none").low_res[0]
        for layer in layers
    ]
    assert base[0].shape[-1] > base[1].shape[-1] or model_name == "vgg"
    for i in range(images.shape[0]):
        scaled = []
        for m in (base[0][i], base[1][i]):
            assert m.amax() > m.amin(), "the test needs maps that are not flat"
            scaled.append((m - m.min()) / (m.max() - m.min()))
        finest = tuple(max(a, b) for a, b in zip(scaled[0].shape, scaled[1].shape, strict=True))
        resized = [
            F.interpolate(m[None, None], size=finest, mode="bilinear", align_corners=False)[0, 0]
            for m in scaled
        ]
        ref = resized[0] * resized[1]
        torch.testing.assert_close(ours.low_res[0][i], ref, atol=ATOL, rtol=1e-4)
        torch.testing.assert_close(ours.low_res[1][i], scaled[1], atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(ours.maps, ours.layer_maps[0])


class BiasNet(nn.Module):
    """conv+bias -> BN -> in-place ReLU -> strided conv+bias -> BN -> ReLU -> GAP -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(inplace=True),
            nn.Conv2d(4, 6, 3, stride=2, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(6, 3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.body(images), 1).flatten(1))


def bias_net() -> BiasNet:
    torch.manual_seed(23)
    model = BiasNet().eval()
    with torch.no_grad():
        for bn in (model.body[1], model.body[4]):
            c = bn.num_features
            bn.running_mean.copy_(0.3 * torch.randn(c))
            bn.running_var.copy_(0.5 + torch.rand(c))
            bn.weight.copy_(1 + 0.3 * torch.randn(c))
            bn.bias.copy_(0.3 * torch.randn(c))
    return model


def full_gradient(model: BiasNet, image: torch.Tensor, target: int):
    """The forward written out with every bias a full (C, h, w) tensor: dy/dx and each dy/db."""
    x = image[None].clone().requires_grad_()
    biases, terms = [], []
    h = x
    for m in model.body:
        if isinstance(m, nn.Conv2d):
            h = F.conv2d(h, m.weight, None, m.stride, m.padding)
            b = m.bias
        elif isinstance(m, nn.BatchNorm2d):
            scale = m.weight / torch.sqrt(m.running_var + m.eps)
            h = h * scale[None, :, None, None]
            b = m.bias - m.running_mean * scale  # the implicit bias of x -> x * scale + b
        else:
            h = F.relu(h)
            continue
        full = b.detach()[None, :, None, None].expand_as(h).clone().requires_grad_()
        biases.append(full)
        h = h + full
    y = model.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))[0, target]
    grads = torch.autograd.grad(y, [x, *biases])
    terms = [g * b.detach() for g, b in zip(grads[1:], biases, strict=True)]
    # completeness (eq. 2): input term + bias terms + the fc bias is the output itself
    total = (grads[0] * x).sum() + sum(t.sum() for t in terms) + model.fc.bias[target]
    torch.testing.assert_close(total, y, atol=1e-4, rtol=1e-4)
    return (grads[0] * x.detach())[0], [t[0] for t in terms]


def psi(term: torch.Tensor, size: int) -> torch.Tensor:
    """The post-processing of one (C, h, w) term: abs, rescale to [0, 1], upsample, sum C."""
    term = term.abs()
    if term.max() == term.min():
        return torch.zeros(size, size)
    term = (term - term.min()) / (term.max() - term.min())
    return F.interpolate(term[None], size=(size, size), mode="bilinear")[0].sum(0)


def test_fullgrad_equals_the_papers_sum_of_processed_full_gradients():
    model = bias_net()
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(23))
    targets = torch.tensor([0, 2, 1])
    # "body.2" ends after the first conv and BN; "body.5" after all of them
    ours = FullGrad(model, ["body.2", "body.5"]).explain(images, targets, "none")
    for i in range(images.shape[0]):
        input_term, bias_terms = full_gradient(model, images[i], int(targets[i]))
        # eq. 5: psi of the input term, then of each layer's bias term, summed
        ref = psi(input_term, 8)
        sums = []
        for t in bias_terms:
            ref = ref + psi(t, 8)
            sums.append(ref)
        assert all(t.abs().amax() > 0 for t in bias_terms)
        torch.testing.assert_close(ours.low_res[0][i], sums[1], atol=ATOL, rtol=1e-4)
        torch.testing.assert_close(ours.low_res[1][i], sums[3], atol=ATOL, rtol=1e-4)


def guided_relu(x: torch.Tensor) -> torch.Tensor:
    """ReLU whose backward passes grad * (x > 0) * (grad > 0) (Springenberg et al. 2015)."""

    class Guided(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.clamp_min(0)

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return grad * (x > 0) * (grad > 0)

    return Guided.apply(x)


def resnet_forward(model: ResNet18, images: torch.Tensor, relu) -> torch.Tensor:
    """The ResNet's forward written out with a chosen ReLU (its blocks call F.relu)."""
    x = (images - model.mean) / model.std
    x = relu(model.bn1(model.conv1(x)))
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in stage:
            out = relu(block.bn1(block.conv1(x)))
            x = relu(block.bn2(block.conv2(out)) + block.shortcut(x))
    return model.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


@pytest.mark.parametrize("model_name", ["resnet", "vgg"])
def test_guided_gradcam_is_gradcam_times_guided_backprop(model_name):
    if model_name == "resnet":
        model, layer, size = trained_like_resnet(), "layer3", 32
        targets = torch.tensor([0, 3, 7])
    else:
        torch.manual_seed(24)
        model, layer, size = TinyVGG().eval(), "features.5", 16
        with torch.no_grad():  # mostly positive class weights: Grad-CAM maps that are not zero
            model.classifier.weight.copy_(torch.rand_like(model.classifier.weight) - 0.2)
        targets = torch.tensor([0, 3, 4])
    images = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(24))
    ours = GuidedGradCAM(model, layer).explain(images, targets, "none")
    if model_name == "resnet":
        grad_cam = naive_resnet(model, images, targets, layer)  # (N, 8, 8), ReLU'd
    else:
        grad_cam = naive_gradcam_vgg(model, images, targets, 5)
    for i in range(images.shape[0]):
        x = images[i : i + 1].clone().requires_grad_()
        if model_name == "resnet":
            logits = resnet_forward(model, x, guided_relu)
        else:
            h = x
            for m in model.features:
                h = guided_relu(h) if isinstance(m, nn.ReLU) else m(h)
            logits = model.classifier(F.adaptive_avg_pool2d(h, 1).flatten(1))
        (guided,) = torch.autograd.grad(logits[0, int(targets[i])], x)
        (plain,) = torch.autograd.grad(model(x)[0, int(targets[i])], x)
        assert (guided - plain).abs().amax() > 0.1 * plain.abs().amax(), "guiding must matter"
        ref = up(grad_cam[i : i + 1], size)[0] * guided[0].abs().amax(0)
        assert ref.amax() > 0
        torch.testing.assert_close(ours.low_res[0][i], ref, atol=1e-7, rtol=1e-4)
    # the guide is gone: plain gradients afterwards
    assert no_hooks(model)
    torch.testing.assert_close(
        GradCAM(model, layer).explain(images, targets, "none").low_res[0],
        grad_cam,
        atol=ATOL,
        rtol=1e-4,
    )


# -- Ablation-CAM, SS-CAM, IS-CAM, KPCA-CAM, ShapleyCAM --------------------------------------


def logits_with_channel_zeroed(model, image, layer, k):
    """(K,) logits of one image with channel k of `layer`'s output zeroed, the whole model run."""

    def zero(module, inputs, output):
        output = output.clone()
        output[:, k] = 0
        return output

    handle = find_layer(model, layer).register_forward_hook(zero)
    try:
        with torch.no_grad():
            return model(image[None])[0]
    finally:
        handle.remove()


# layer3.1.conv1 sits inside a residual block, whose skip path comes from below it
@pytest.mark.parametrize("layer", ["layer3", "layer4", "layer3.1.conv1"])
def test_ablationcam_equals_zeroing_each_channel_per_image(layer):
    model = resnet(width=4)
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(20))
    with torch.no_grad():
        model.linear.bias.sub_(0.1)  # some logits negative: a rejected class's score
        logits = model(images)
    targets = torch.tensor([1, 7, 1])
    scores = logits.gather(1, targets[:, None])
    assert (scores < 0).any() and (scores > 0).any(), "the test needs scores of both signs"
    stem_batches, handle = count_forwards(model.conv1)
    try:
        ours = AblationCAM(model, layer, batch=5).explain(images, targets, "none")
    finally:
        handle.remove()
    if layer != "layer3.1.conv1":  # forward-only from the hooked layer on
        assert stem_batches[0] == 3 and set(stem_batches[1:]) == {0}
    acts = {}
    handle = find_layer(model, layer).register_forward_hook(lambda m, i, o: acts.update(a=o))
    try:
        with torch.no_grad():
            model(images)
    finally:
        handle.remove()
    for i in range(images.shape[0]):
        y = logits[i, targets[i]]
        cam = torch.zeros(acts["a"].shape[2:])
        for k in range(acts["a"].shape[1]):
            y_k = logits_with_channel_zeroed(model, images[i], layer, k)[targets[i]]
            cam += (y - y_k) / y.abs() * acts["a"][i, k]  # the relative drop, sign kept
        ref = cam.clamp_min(0)
        assert ref.amax() > 0
        torch.testing.assert_close(ours.low_res[0][i], ref, atol=ATOL, rtol=1e-4)


def score_variant_reference(model, image, acts, target, inputs_of):
    """Un-rectified map of one image: mean softmax over the masked inputs minus X_b's."""
    with torch.no_grad():
        baseline = model(torch.zeros_like(image[None])).softmax(1)[0, target]
        cam = torch.zeros(acts.shape[1:])
        for k in range(acts.shape[0]):
            if acts[k].max() == acts[k].min():
                continue  # flat: no region to keep
            mask = up(acts[k][None], image.shape[-1])[0]
            mask = (mask - mask.min()) / (mask.max() - mask.min())
            probs = [model(x[None]).softmax(1)[0, target] for x in inputs_of(image, mask)]
            cam += (sum(probs) / len(probs) - baseline) * acts[k]
    return cam


@pytest.mark.parametrize("model_name", ["vgg", "resnet"])
def test_sscam_and_iscam_equal_per_channel_loops(model_name):
    if model_name == "vgg":
        model, images = scorecam_case()
        layer, targets = "features.6", torch.tensor([3, 1])
    else:
        model, layer = resnet(width=4), "layer3"
        images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(22))
        with torch.no_grad():
            targets = model(images).argmax(1)
    samples, std, seed = 3, 2.0, 5
    knobs = {
        "sscam": SSKnobs(samples=samples, std=std, seed=seed, batch=7),
        "iscam": ISKnobs(samples=samples, batch=7),
    }
    size = images.shape[-1]
    acts = {}
    handle = find_layer(model, layer).register_forward_hook(lambda m, i, o: acts.update(a=o))
    try:
        with torch.no_grad():
            model(images)
    finally:
        handle.remove()
    # SS-CAM's documented noise: (S, h, w) fields at the layer's resolution from a CPU
    # generator seeded with SSKnobs.seed, upsampled as the channel is
    gen = torch.Generator().manual_seed(seed)
    noise = up(torch.randn((samples, *acts["a"].shape[2:]), generator=gen), size)
    variants = {
        "sscam": (SSCAM, lambda x, mask: [x * (mask + std * noise[s]) for s in range(samples)]),
        "iscam": (ISCAM, lambda x, mask: [x * mask * i / samples for i in range(1, samples + 1)]),
    }
    plain = ScoreCAM(model, layer).explain(images, targets, "none").low_res[0]
    for name, (cls, inputs_of) in variants.items():
        ours = cls(model, layer, knobs=knobs[name]).explain(images, targets, "none")
        ours = ours.low_res[0]
        for i in range(images.shape[0]):
            target = int(targets[i])
            ref = score_variant_reference(model, images[i], acts["a"][i], target, inputs_of)
            ref = ref.clamp_min(0)
            assert ref.amax() > 0
            assert (ref - plain[i]).abs().amax() > 0.1 * ref.amax(), f"{name} equals Score-CAM"
            # a random network's probabilities move little: maps of ~1e-3, an atol to match
            torch.testing.assert_close(ours[i], ref, atol=1e-4 * float(ref.amax()), rtol=1e-3)


def kernel_pca_reference(acts, kernel, gamma, coef0=1.0):
    """One image's (C, h, w) acts -> (h, w) first kernel-PCA coordinates, numpy and loops."""
    c, h, w = acts.shape
    x = acts.double().numpy().reshape(c, h * w).T  # (hw, C)
    x = x - x.mean(0)
    m = h * w
    k = np.zeros((m, m))
    for i in range(m):
        for j in range(m):
            if kernel == "sigmoid":
                k[i, j] = np.tanh(gamma * x[i] @ x[j] + coef0)
            else:  # rbf
                k[i, j] = np.exp(-gamma * ((x[i] - x[j]) ** 2).sum())
    ones = np.full((m, m), 1.0 / m)
    k = k - ones @ k - k @ ones + ones @ k @ ones  # centred in feature space
    values, vectors = np.linalg.eigh(k)
    assert values[-1] > 1.05 * values[-2], "the test needs a clear first component"
    proj = vectors[:, -1] * np.sqrt(values[-1])
    proj = proj if proj[np.abs(proj).argmax()] > 0 else -proj  # the largest entry positive
    return torch.tensor(proj.reshape(h, w), dtype=torch.float32)


@pytest.mark.parametrize(
    "model_name,layer", [("exp", "stem"), ("exp", "lift"), ("resnet", "layer3")]
)
@pytest.mark.parametrize("kernel,gamma", [("sigmoid", None), ("rbf", 0.05)])
def test_kpcacam_equals_kernel_pca_per_image(model_name, layer, kernel, gamma):
    if model_name == "exp":
        model, images, _ = exp_head_case()
        acts = torch.stack([model.acts(image, layer) for image in images])
    else:
        model = resnet(width=4)
        images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(22))
        with torch.no_grad():
            acts = resnet_acts(model, images, layer)
    ours = KPCACAM(model, layer, kernel=kernel, gamma=gamma)
    maps = ours.explain(images, normalize="none").low_res[0]
    eigen = EigenCAM(model, layer).explain(images, normalize="none").low_res[0]
    for i in range(images.shape[0]):
        g = 1.0 / acts.shape[1] if gamma is None else gamma
        ref = kernel_pca_reference(acts[i], kernel, g)
        assert (minmax(ref[None]) - minmax(eigen[i][None])).abs().amax() > 0.05
        torch.testing.assert_close(maps[i], ref, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("layer", EXP_LAYERS)
def test_shapleycam_equals_gradient_minus_half_hessian_times_acts(layer):
    model, images, targets = exp_head_case()
    ours = ShapleyCAM(model, layer).explain(images, targets, "none").low_res[0]
    for i in range(images.shape[0]):
        acts = model.acts(images[i], layer)
        c = int(targets[i])

        def rest(a, c=c):  # the ReST utility: logit plus log-probability
            logits = model.rest(a, layer)
            return logits[c] + logits.log_softmax(0)[c]

        leaf = acts.clone().requires_grad_()
        (grads,) = torch.autograd.grad(rest(leaf), leaf)
        hessian = torch.autograd.functional.hessian(rest, acts)  # (C, h, w, C, h, w)
        hvp = torch.einsum("abcdef,def->abc", hessian, acts)
        weights = (grads - 0.5 * hvp).mean((1, 2))  # (C,)
        ref = torch.einsum("c,chw->hw", weights, acts).clamp_min(0)
        gradcam = torch.einsum("c,chw->hw", grads.mean((1, 2)), acts).clamp_min(0)
        assert ref.amax() > 0
        assert (ref - gradcam).abs().amax() > 0.05 * ref.amax(), "the test needs H A to matter"
        torch.testing.assert_close(ours[i], ref, atol=ATOL, rtol=1e-4)


def test_shapleycam_of_a_logit_is_gradcam_on_a_relu_network():
    model = resnet(width=4)
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(23))
    # a score callable is differentiated as it is: the logit is piecewise linear, H A = 0
    shapley = ShapleyCAM(model, "layer3")(images, lambda logits: logits[:, 2])
    torch.testing.assert_close(shapley, GradCAM(model, "layer3")(images, 2), atol=ATOL, rtol=0)


def test_another_methods_knobs_are_an_error():
    model = TinyVGG()
    with pytest.raises(ValueError, match=r"^gradcam has no knobs of its own, not SmoothKnobs"):
        create("gradcam", model, "features.6", CamConfig(knobs=SmoothKnobs(samples=8)))
    with pytest.raises(ValueError, match=r"^sscam reads SSKnobs, not ScoreKnobs \(scorecam's"):
        SSCAM(model, "features.6", knobs=ScoreKnobs(top_k=4))
    # a method's own knobs, or none (its defaults), pass
    ScoreCAM(model, "features.6", knobs=ScoreKnobs(top_k=4)).close()
    with create("sscam", model, "features.6") as cam:
        assert cam.knobs == SSKnobs()
    # by name: the method's own knobs, or an error naming those it has
    assert SSCAM(model, "features.6", top_k=4, samples=2).knobs == SSKnobs(top_k=4, samples=2)
    with pytest.raises(ValueError, match=r"^scorecam reads no knob 'samples': its knobs are batch"):
        ScoreCAM(model, "features.6", samples=2)


def test_every_methods_knobs_name_it():
    """Each Knobs class names a method that exists, and each method reads its own."""
    assert set(KNOBS) <= set(METHODS)
    for name, knobs in KNOBS.items():
        assert knobs.method == name
        with create(name, TinyVGG(), "features.6") as cam:
            assert type(cam.knobs) is knobs
    # a number below its lowest is refused in one line, naming the method
    with pytest.raises(ValueError, match=r"^sscam's samples must be >= 1, got 0$"):
        SSKnobs(samples=0)
