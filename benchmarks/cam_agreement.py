"""How closely camlens's maps agree with the anchor libraries' maps of the same method.

    python benchmarks/cam_agreement.py --checkpoint CKPT [--data SOURCE] [--images 64]
                                       [--score-images 8] [--ablation-images 64]
                                       [--layers layer4,layer3] [--methods ...]

Per method and layer: the Pearson and Spearman correlation of camlens's map with the anchor's
map of the same image and class (the predicted one), both min-max scaled at the input's
resolution, mean and min over the images; plus a second camlens variant where a named formula
difference explains the gap (e.g. the anchor's ReLU), to show that it is the whole gap.
Needs the anchors (pytorch-grad-cam, torchcam), which import beside torch 2.14.1 +
torchvision 0.29.1 (README, Performance). The Score-CAM variants cost `score_samples` forward
passes per channel, so they run on the first `--score-images` images only.

Methods: Ablation-CAM, KPCA-CAM, ShapleyCAM (pytorch-grad-cam), SS-CAM, IS-CAM (torchcam).
Nothing is asserted; the figures go in the README. Flat maps as `helpers.pearson` states.
"""

from __future__ import annotations

import argparse
import sys

import torch

from camlens.cam import create
from camlens.model import ResNet18, load_checkpoint
from helpers import ablation_kpca_shapley_ss_is_anchors, minmax, pearson, spearman, upsampled


def camlens_variants(method: str, result) -> dict[str, torch.Tensor]:
    """camlens's map, and where a named difference explains the gap, the map without it."""
    size = tuple(result.maps.shape[-2:])
    out = {"camlens": result.maps}
    if method == "kpcacam":
        # pytorch-grad-cam ReLUs the projection (its BaseCAM), camlens keeps it whole
        out["camlens + ReLU"] = minmax(upsampled(result.low_res[0].clamp_min(0), size))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="a camlens .safetensors checkpoint")
    parser.add_argument("--data", default=None, help="camlens data source (test split)")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--score-images", type=int, default=8, help="SS-CAM / IS-CAM images")
    # pytorch-grad-cam's AblationCAM runs the whole model once per channel and image
    parser.add_argument("--ablation-images", type=int, default=64, help="Ablation-CAM images")
    parser.add_argument("--layers", default="layer4,layer3")
    parser.add_argument("--methods", default="ablationcam,kpcacam,shapleycam,sscam,iscam")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checkpoint:
        model, _ = load_checkpoint(args.checkpoint, device=torch.device("cpu"))
        note = f"checkpoint {args.checkpoint}"
    else:
        torch.manual_seed(0)
        model, note = ResNet18().eval(), "random-init ResNet18"
    if args.data:
        from camlens.data import load_dataset

        test = load_dataset(args.data, progress=False).test
        images = test.images[: args.images].float().div(255)
        note += f", first {len(images)} test images of {args.data}"
    else:
        images = torch.rand(args.images, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        note += ", uniform-noise images"
    model.eval()
    print(f"torch {torch.__version__}, {note}; class: the predicted one")
    with torch.no_grad():
        preds = model(images).argmax(1)
    for layer in args.layers.split(","):
        print(f"\n@{layer}")
        for method in args.methods.split(","):
            engine = create(method, model, layer)
            found = ablation_kpca_shapley_ss_is_anchors(model, layer, engine.config.score_samples)
            if method not in found:
                continue
            fn, anchor = found[method]
            n = {"sscam": args.score_images, "iscam": args.score_images}.get(method, len(images))
            n = min(n, args.ablation_images) if method == "ablationcam" else n
            x, t = images[:n], preds[:n]
            theirs = fn(x, t).float()
            for name, ours in camlens_variants(method, engine.explain(x, t)).items():
                r, rho = pearson(ours, theirs), spearman(ours, theirs)
                print(
                    f"  {method:<11} {name:<15} vs {anchor}, {n} images: Pearson mean "
                    f"{r.mean():.3f} min {r.min():.3f}; Spearman mean {rho.mean():.3f} "
                    f"min {rho.min():.3f}"
                )
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
