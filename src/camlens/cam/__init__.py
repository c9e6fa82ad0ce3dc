"""Class activation maps for any CNN `nn.Module`: batched, hooks only during a call.

    with GradCAM(model, layer="layer4") as cam:
        maps = cam(images)                              # (N, H, W) in [0, 1], predicted class
        result = cam.explain(images, targets=labels)    # CamResult: maps, low_res, logits, ...
        pred, true = cam.explain_many(images, [None, labels])   # one forward, two backwards
        pair = cam.explain_pair(images, labels)         # pred, true and signed contrast maps

Public API:
    TOKEN_METHODS           those of METHODS that read a transformer's attention (rollout)
    METHODS                 name -> class: gradcam, gradcam++, smoothgradcam++, xgradcam,
                            hirescam, layercam, gradcam-elementwise, scorecam, eigencam,
                            eigengradcam, cam,
                            finercam, refinecam, fullgrad, guidedgradcam,
                            ablationcam, sscam, iscam, kpcacam, shapleycam, rollout
    GradCAM, GradCAMPlusPlus, SmoothGradCAMPlusPlus, XGradCAM, HiResCAM, LayerCAM,
    GradCAMElementWise, EigenCAM, EigenGradCAM, CAM, ScoreCAM,
    AblationCAM, SSCAM, ISCAM, KPCACAM, ShapleyCAM, AttentionRollout
        (model, layer, config=None, **overrides): `layer` a dotted name, a module or a list of
        them (maps averaged into `maps`; each layer's own map in `layer_maps`)
        .__call__(images, targets=None) -> (N, H, W) tensor
        .explain(images, targets=None, normalize=None) -> CamResult
        .explain_many(images, target_sets, normalize=None) -> list[CamResult]
        .explain_pair(images, labels, normalize=None) -> PairResult
        .close(); usable as a context manager
    FinerCAM, RefineCAM     Grad-CAM of y_c - 0.6 sum_j w_j y_j over the 3 nearest classes;
                            Grad-CAM++ maps of several layers multiplied (`maps`: the product)
    FullGrad, GuidedGradCAM input-resolution maps; `layer` is where their layer part is read
                            (FullGrad: bias terms up to it; Guided Grad-CAM: its Grad-CAM)
    CamConfig               what every method reads (normalize, precision, batch_size,
                            layout) and `knobs`: the one method's own, or None (defaults)
    Knobs: ScoreKnobs (scorecam: batch, top_k), SSKnobs (sscam: + samples, std, seed), ISKnobs
        (iscam: + samples), AblationKnobs (batch), SmoothKnobs (smoothgradcam++: samples, std,
        seed), FinerKnobs (k, gamma), KPCAKnobs (kernel, gamma, coef0, degree); KNOBS: method
        -> its Knobs class; an engine refuses another method's knobs in one line
    CamResult, PairResult   results (see base.py for fields)
    Target(indices, versus, weight, signed) target: logit[indices] (None: predicted), minus
                            weight x logit[versus] (versus (N,), (N, k) or Similar(k))
    Similar(k)              Target.versus: each image's k classes nearest the explained one
    create(method, model, layer, config=None, **overrides) -> an engine by METHODS name
    explain_pair(model, images, labels, method="gradcam", layer="layer4", ...) -> PairResult
    find_layer(model, name) -> nn.Module (unknown names list the valid ones)
    normalize_maps(maps, mode, signed) -> list of scaled maps
    candidate_layers(model, image_size, layout="auto") -> [Candidate]: layers a map can be
        read from (one dummy forward), with shapes and layouts; pick_layer(...) the last
        before the pooling
    LAYOUTS, read_layout, Reading, token_grid, LayoutError: how a layer's output is read into
        (N, C, h, w): "nchw", "nhwc" (timm's Swin stages), "tokens" (a ViT's, with prefix
        tokens); every engine and `create` take layout= ("auto" reads it; CamConfig.layout)
    logits_of(output) -> (N, K): a model's tensor, tuple, dict or ModelOutput (.logits)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from camlens.cam.ablation import AblationCAM
from camlens.cam.base import (
    NORMALIZE,
    PRECISIONS,
    BaseCAM,
    CamConfig,
    CamResult,
    Engine,
    PairResult,
    Target,
    TargetSpec,
    capture,
    eval_mode,
    find_layer,
    normalize_maps,
)
from camlens.cam.config import (
    KNOBS,
    AblationKnobs,
    FinerKnobs,
    ISKnobs,
    Knobs,
    KPCAKnobs,
    ScoreKnobs,
    SmoothKnobs,
    SSKnobs,
)
from camlens.cam.finer import FinerCAM, RefineCAM, Refined
from camlens.cam.guided import GuidedGradCAM
from camlens.cam.kpca import KPCACAM
from camlens.cam.layers import Candidate, candidate_layers, pick_layer
from camlens.cam.layout import LAYOUTS, LayoutError, Reading, logits_of, read_layout, token_grid
from camlens.cam.methods import (
    CAM,
    EigenCAM,
    EigenGradCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    XGradCAM,
)
from camlens.cam.pixel import FullGrad, InputCAM
from camlens.cam.renamed import old_names
from camlens.cam.rollout import AttentionRollout
from camlens.cam.score import ISCAM, SSCAM, ScoreCAM
from camlens.cam.shapley import ShapleyCAM
from camlens.cam.smooth import SmoothGradCAMPlusPlus
from camlens.cam.targets import Similar

__all__ = [
    "CAM",
    "Candidate",
    "LAYOUTS",
    "LayoutError",
    "Reading",
    "logits_of",
    "read_layout",
    "METHODS",
    "TOKEN_METHODS",
    "NORMALIZE",
    "PRECISIONS",
    "BaseCAM",
    "CamConfig",
    "CamResult",
    "KNOBS",
    "Knobs",
    "AblationKnobs",
    "FinerKnobs",
    "ISKnobs",
    "KPCAKnobs",
    "ScoreKnobs",
    "SSKnobs",
    "SmoothKnobs",
    "Target",
    "EigenCAM",
    "EigenGradCAM",
    "Engine",
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "HiResCAM",
    "LayerCAM",
    "PairResult",
    "ScoreCAM",
    "SmoothGradCAMPlusPlus",
    "XGradCAM",
    "candidate_layers",
    "capture",
    "create",
    "eval_mode",
    "explain_pair",
    "find_layer",
    "normalize_maps",
    # maps refined by other classes or layers, and the input-resolution methods
    "FinerCAM",
    "FullGrad",
    "GuidedGradCAM",
    "InputCAM",
    "RefineCAM",
    "Refined",
    "Similar",
    "pick_layer",
    "token_grid",
    # forward-only, Score-CAM variants, kernel PCA, Hessian
    "AblationCAM",
    "ISCAM",
    "KPCACAM",
    "SSCAM",
    "ShapleyCAM",
    # transformer-native
    "AttentionRollout",
]

METHODS: dict[str, type[Engine]] = {
    cls.name: cls
    for cls in (
        GradCAM,
        GradCAMPlusPlus,
        SmoothGradCAMPlusPlus,
        XGradCAM,
        HiResCAM,
        LayerCAM,
        GradCAMElementWise,
        ScoreCAM,
        EigenCAM,
        EigenGradCAM,
        CAM,
        # refined by other classes or layers; input-resolution maps
        FinerCAM,
        RefineCAM,
        FullGrad,
        GuidedGradCAM,
        # forward-only, Score-CAM variants, kernel PCA, Hessian
        AblationCAM,
        SSCAM,
        ISCAM,
        KPCACAM,
        ShapleyCAM,
        # transformers' own: attention, not a layer's activations
        AttentionRollout,
    )
}

__getattr__ = old_names(__name__, globals())  # camlens 0.1's normalize_cams

# the methods that read a transformer's attention over tokens, and refuse a CNN's layers
TOKEN_METHODS = frozenset(n for n, cls in METHODS.items() if getattr(cls, "tokens_only", False))


def create(
    method: str,
    model: nn.Module,
    layer: str | nn.Module | Sequence[str | nn.Module],
    config: CamConfig | None = None,
    **overrides: Any,
) -> Engine:
    """The engine named `method` (a METHODS key); unknown names list the known ones."""
    if method not in METHODS:
        raise KeyError(f"unknown CAM method {method!r}: choose one of {', '.join(METHODS)}")
    return METHODS[method](model, layer, config, **overrides)


def explain_pair(
    model: nn.Module,
    images: Tensor,
    labels: TargetSpec,
    method: str = "gradcam",
    layer: str | nn.Module | Sequence[str | nn.Module] = "layer4",
    config: CamConfig | None = None,
    **overrides: Any,
) -> PairResult:
    """Predicted-class, true-class and (linear methods) contrast maps of `images`.

    One forward pass; with normalize="pair" the pred and true maps of an image share a scale.
    """
    with create(method, model, layer, config, **overrides) as cam:
        return cam.explain_pair(images, labels)
