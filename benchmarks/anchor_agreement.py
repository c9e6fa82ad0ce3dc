"""Agreement of Finer-CAM, RefineCAM, FullGrad and Guided Grad-CAM with the anchor libraries.

    PYTHONPATH=src python benchmarks/anchor_agreement.py --data SOURCE [--images 64]

Run it from a venv where the anchors import (torch 2.14.1 + torchvision 0.29.1 + grad-cam
1.5.x + torchcam 0.5 + captum 0.9, camlens installed): pytorch-grad-cam needs torchvision. For
each method and layer it prints the per-image Pearson and Spearman correlation between
camlens's map and the anchor's (both min-max scaled at the image's size, the predicted class),
mean and worst over the images. Nothing is asserted: the README names what each difference
comes from. Flat maps: two agree (1), one against a varied map does not (0), as
`helpers.pearson` states; the README's table was measured when a flat map in either counted 1.
"""

from __future__ import annotations

import argparse
import warnings

import torch
import torch.nn.functional as F

from camlens.cam import create
from camlens.model import load_checkpoint
from helpers import UNGUIDED, finer_refine_pixel_anchors, minmax, pearson, spearman


def unguided(model: torch.nn.Module, layer: str, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    cam = create("gradcam", model, layer).explain(x, t, "none").maps  # (N, H, W), upsampled
    x = x.clone().requires_grad_()
    (grads,) = torch.autograd.grad(model(x).gather(1, t[:, None]).sum(), x)
    return minmax(cam * grads.abs().amax(1))


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
    for method, layer, anchor, fn in finer_refine_pixel_anchors(model):
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
