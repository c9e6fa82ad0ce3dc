"""Agreement of Finer-CAM, RefineCAM, FullGrad and Guided Grad-CAM with the anchor libraries.

    PYTHONPATH=src python benchmarks/anchor_agreement.py --data SOURCE [--images 64]

Run it from a venv where the anchors import (torch 2.14.1 + torchvision 0.29.1 + grad-cam
1.5.x + torchcam 0.5 + captum 0.9, camlens installed): pytorch-grad-cam needs torchvision. For
each method and layer it prints the per-image Pearson and Spearman correlation between
camlens's map and the anchor's (both min-max scaled at the image's size, the predicted class),
mean and worst over the images. Nothing is asserted: the README names what each difference
comes from. Maps that are flat in either library count as agreeing (correlation 1).
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

from cam_speed import minmax, pearson, spearman  # beside this script: one copy of each
from camlens.cam import create
from camlens.model import load_checkpoint

Maps = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (images, targets) -> (N, H, W)
# a diagnostic, not a method: camlens's Grad-CAM times the plain (unguided) input gradient
UNGUIDED = "gradcam x grad"


def unguided(model: torch.nn.Module, layer: str, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    cam = create("gradcam", model, layer).explain(x, t, "none").cams  # (N, H, W), upsampled
    x = x.clone().requires_grad_()
    (grads,) = torch.autograd.grad(model(x).gather(1, t[:, None]).sum(), x)
    return minmax(cam * grads.abs().amax(1))


def size_of(maps: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """(N, h, w) -> (N, H, W) bilinear, min-max scaled."""
    maps = F.interpolate(maps[:, None].float(), images.shape[-2:], mode="bilinear")[:, 0]
    return minmax(maps)


def anchors(model: torch.nn.Module) -> list[tuple[str, str, str, Maps]]:
    """(method, layers, anchor, the anchor's map function), for the anchors that import."""
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="shipped")
    parser.add_argument("--data", required=True, help="camlens data source (test split)")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16, help="images per anchor call")
    parser.add_argument("--only", default=None, help="comma-separated methods to run")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", module="captum")  # its notes on hooks and requires_grad
    torch.manual_seed(0)
    model, _ = load_checkpoint(args.checkpoint)
    model = model.float().eval()
    from camlens.data import load_dataset

    test = load_dataset(args.data, progress=False).test
    images = test.images[: args.images].float().div(255)
    with torch.no_grad():
        preds = model(images).argmax(1)
    print(f"torch {torch.__version__}; {args.checkpoint}, first {len(images)} test images")
    print(f"{'method':<14} {'layers':<14} {'anchor':<17} Pearson mean/worst  Spearman mean/worst")
    for method, layer, anchor, fn in anchors(model):
        if args.only and method not in args.only.split(","):
            continue
        layers = layer.split("+")
        ours, theirs = [], []
        for s in range(0, len(images), args.batch):
            x, t = images[s : s + args.batch], preds[s : s + args.batch]
            if method == UNGUIDED:
                ours.append(unguided(model, layer, x, t))
                theirs.append(fn(x.clone(), t).float())
                continue
            with create(method, model, layers) as cam:
                ours.append(cam(x, t))
            theirs.append(fn(x.clone(), t).float())
        ours, theirs = torch.cat(ours), torch.cat(theirs)
        r, rho = pearson(ours, theirs), spearman(ours, theirs)
        print(
            f"{method:<14} {layer:<14} {anchor:<17} {r.mean():.3f} / {r.min():.3f}"
            f"       {rho.mean():.3f} / {rho.min():.3f}"
        )
    if not args.only or "guidedgradcam" in args.only:
        guided_where_captum_guides(images, args.batch)
    return 0


def guided_where_captum_guides(images: torch.Tensor, batch: int) -> None:
    """Guided Grad-CAM on a model whose ReLUs are nn.ReLU modules, which captum can guide:
    torchvision's ResNet18 (random init, seed 0), the images resized to 128 px."""
    try:
        import torchvision
        from captum.attr import GuidedGradCam
    except Exception as e:
        print(f"torchvision / captum: unavailable ({type(e).__name__}: {e})")
        return
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x_all = F.interpolate(images, size=(128, 128), mode="bilinear")
    with torch.no_grad():
        preds = model(x_all).argmax(1)
    for layer in ("layer4", "layer3"):
        ours, theirs = [], []
        for s in range(0, len(x_all), batch):
            x, t = x_all[s : s + batch], preds[s : s + batch]
            ours.append(create("guidedgradcam", model, layer)(x, t))
            attr = GuidedGradCam(model, getattr(model, layer)).attribute(
                x.clone(), target=t, interpolate_mode="bilinear"
            )
            theirs.append(minmax(attr.detach().abs().amax(1)))
        ours, theirs = torch.cat(ours), torch.cat(theirs)
        r, rho = pearson(ours, theirs), spearman(ours, theirs)
        print(
            f"{'guidedgradcam':<14} {layer:<14} {'captum (tv r18)':<17} "
            f"{r.mean():.3f} / {r.min():.3f}       {rho.mean():.3f} / {rho.min():.3f}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
