"""What the benchmark scripts share: map correlations, scaling, and the anchors' map functions.

The scripts import only this module of each other (run as `python benchmarks/X.py`, this
folder is on sys.path). The anchors are the other libraries' versions of a camlens method
(pytorch-grad-cam, torchcam, captum), as fn(images, targets) -> (N, H, W) maps, found where
they import.
"""

from __future__ import annotations

import platform
import subprocess
from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "UNGUIDED",
    "Maps",
    "ablation_kpca_shapley_ss_is_anchors",
    "finer_refine_pixel_anchors",
    "minmax",
    "pearson",
    "size_of",
    "spearman",
    "upsampled",
]

Maps = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (images, targets) -> (N, H, W)
# a diagnostic, not a method: camlens's Grad-CAM times the plain (unguided) input gradient
UNGUIDED = "gradcam x grad"


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, H, W) x 2 -> (N,) Pearson correlation per map, in float64.

    Flat maps, the one convention of every benchmark: two flat maps agree (1); a flat map
    against a varied one does not (0), so a method that leaves a map flat where the other
    finds a place is never counted as agreeing.
    """
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    norm = a.norm(dim=1) * b.norm(dim=1)
    both_flat = (a.norm(dim=1) == 0) & (b.norm(dim=1) == 0)
    corr = torch.where(norm > 0, (a * b).sum(1) / norm.clamp_min(1e-30), 0.0)
    return torch.where(both_flat, 1.0, corr)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, H, W) x 2 -> (N,) Spearman correlation per map: `pearson` of the ranks (ties get
    distinct ranks by position, so a flat map is not flat in ranks: two flat maps give 1)."""

    def rank(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).argsort(1).argsort(1).float()

    return pearson(rank(a), rank(b))


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """(N, H, W) each scaled to [0, 1]; a flat map becomes zeros."""
    lo, hi = maps.amin((1, 2), keepdim=True), maps.amax((1, 2), keepdim=True)
    return torch.where(hi > lo, (maps - lo) / (hi - lo).clamp_min(1e-30), 0.0)


def upsampled(low: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(low[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def pgc_maps(cls: type, target_cls: type, model, layer: str, **kwargs) -> Callable:
    """pytorch-grad-cam's method `cls` as fn(images, targets) -> (N, H, W) tensor."""

    def run(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with cls(model=model, target_layers=[getattr(model, layer)], **kwargs) as cam:
            maps = cam(images, [target_cls(int(t)) for t in targets])
        return torch.from_numpy(maps)

    return run


def torchcam_maps(cls: type, model, layer: str, **kwargs) -> Callable:
    def run(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with cls(model, target_layer=layer, input_shape=tuple(images.shape[1:]), **kwargs) as e:
            scores = model(images)
            maps = e(class_idx=targets.tolist(), scores=scores)[0]
        return minmax(upsampled(maps.detach().float(), tuple(images.shape[-2:])))

    return run


def ablation_kpca_shapley_ss_is_anchors(
    model, layer: str, samples: int
) -> dict[str, tuple[Callable, str]]:
    """The anchors of Ablation-CAM, KPCA-CAM, ShapleyCAM, SS-CAM and IS-CAM at `layer` that
    import: method -> (the anchor's fn, its name); torchcam's SSCAM noise
    keeps its default std (2.0, per input pixel: see camlens's SSCAM for why camlens differs)."""
    std = 2.0
    found: dict[str, tuple[Callable, str]] = {}
    try:
        from pytorch_grad_cam import KPCA_CAM, AblationCAM, ShapleyCAM
        from pytorch_grad_cam.utils.model_targets import (
            ClassifierOutputReST,
            ClassifierOutputTarget,
        )

        found["ablationcam"] = (
            pgc_maps(AblationCAM, ClassifierOutputTarget, model, layer, batch_size=64),
            "pytorch-grad-cam AblationCAM",
        )
        found["kpcacam"] = (
            pgc_maps(KPCA_CAM, ClassifierOutputTarget, model, layer),
            "pytorch-grad-cam KPCA_CAM",
        )
        found["shapleycam"] = (
            pgc_maps(ShapleyCAM, ClassifierOutputReST, model, layer),
            "pytorch-grad-cam ShapleyCAM, ClassifierOutputReST",
        )
    except Exception as e:  # it fails in several ways without torchvision / ttach / cv2
        print(f"  pytorch-grad-cam: unavailable ({type(e).__name__}: {e})")
    try:
        from torchcam.methods import ISCAM, SSCAM

        found["sscam"] = (
            torchcam_maps(SSCAM, model, layer, batch_size=64, num_samples=samples, std=std),
            f"torchcam SSCAM (num_samples={samples}, std={std})",
        )
        found["iscam"] = (
            torchcam_maps(ISCAM, model, layer, batch_size=64, num_samples=samples),
            f"torchcam ISCAM (num_samples={samples})",
        )
    except ImportError as e:
        print(f"  torchcam: not installed ({e})")
    return found


def size_of(maps: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """(N, h, w) -> (N, H, W) bilinear, min-max scaled."""
    maps = F.interpolate(maps[:, None].float(), images.shape[-2:], mode="bilinear")[:, 0]
    return minmax(maps)


def finer_refine_pixel_anchors(model: torch.nn.Module) -> list[tuple[str, str, str, Maps]]:
    """The anchors of Finer-CAM, RefineCAM, FullGrad and Guided Grad-CAM (and torchcam's
    Grad-CAM++, RefineCAM's base) that import: (method, layers, anchor, its map function)."""
    found: list[tuple[str, str, str, Maps]] = []
    mod = dict(model.named_modules())
    try:
        from pytorch_grad_cam import FinerCAM, FullGrad, GradCAMPlusPlus, RefineCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        def targets_of(t):
            return [ClassifierOutputTarget(int(c)) for c in t]

        for layer in ("layer4", "layer3"):

            def finer(x, t, layer=layer):
                cam = FinerCAM(model, [mod[layer]])  # base Grad-CAM, the predicted class
                maps = cam(x, None, alpha=0.6, comparison_categories=[1, 2, 3])
                return minmax(torch.from_numpy(maps))

            found.append(("finercam", layer, "pytorch-grad-cam", finer))
        for layers in (("layer3", "layer4"), ("layer2", "layer3")):

            def refine(x, t, layers=layers):
                cam = RefineCAM(model, [mod[n] for n in layers], base_method=GradCAMPlusPlus)
                return minmax(torch.from_numpy(cam(x, targets_of(t))))

            found.append(("refinecam", "+".join(layers), "pytorch-grad-cam", refine))

        def fullgrad(x, t):
            with FullGrad(model, []) as cam:  # every Conv2d / BatchNorm2d bias
                return minmax(torch.from_numpy(cam(x, targets_of(t))))

        found.append(("fullgrad", "layer4", "pytorch-grad-cam", fullgrad))
    except Exception as e:  # it fails in several ways without torchvision / cv2
        print(f"pytorch-grad-cam: unavailable ({type(e).__name__}: {e})")
    try:
        from torchcam.methods import FinerCAM as TcFinerCAM
        from torchcam.methods import GradCAM as TcGradCAM
        from torchcam.methods import GradCAMpp as TcGradCAMpp
        from torchcam.methods import RefineCAM as TcRefineCAM

        for layer in ("layer4", "layer3"):

            def tc_finer(x, t, layer=layer):
                shape = tuple(x.shape[1:])
                with TcFinerCAM(model, layer, shape, base_method=TcGradCAM, gamma=0.6) as ex:
                    maps = ex(t.tolist(), model(x))[0]
                return size_of(maps.detach(), x)

            found.append(("finercam", layer, "torchcam", tc_finer))
        for layers in (("layer3", "layer4"), ("layer2", "layer3")):

            def tc_refine(x, t, layers=layers):
                with TcRefineCAM(model, list(layers), tuple(x.shape[1:])) as ex:
                    maps = ex(t.tolist(), model(x))[0]
                return size_of(maps.detach(), x)

            found.append(("refinecam", "+".join(layers), "torchcam", tc_refine))
        for layer in ("layer4", "layer3"):  # RefineCAM's base alone: where torchcam differs

            def tc_plus(x, t, layer=layer):
                with TcGradCAMpp(model, layer, tuple(x.shape[1:])) as ex:
                    maps = ex(t.tolist(), model(x))[0]
                return size_of(maps.detach(), x)

            found.append(("gradcam++", layer, "torchcam", tc_plus))
    except Exception as e:
        print(f"torchcam: unavailable ({type(e).__name__}: {e})")
    try:
        from captum.attr import GuidedGradCam

        for layer in ("layer4", "layer3"):

            def guided(x, t, layer=layer):
                attr = GuidedGradCam(model, mod[layer]).attribute(
                    x, target=t, interpolate_mode="bilinear"
                )
                return minmax(attr.detach().abs().amax(1))  # camlens's max_c |.|

            found.append(("guidedgradcam", layer, "captum", guided))
            # captum guides nn.ReLU modules only; the ResNet's blocks call F.relu
            found.append((UNGUIDED, layer, "captum", guided))
    except Exception as e:
        print(f"captum: unavailable ({type(e).__name__}: {e})")
    return found


def cpu_name() -> str:
    """The CPU's model name as lscpu says it (what a figure was measured on)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        lines = [line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line]
        return lines[0] if lines else platform.processor()
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
