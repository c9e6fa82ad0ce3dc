"""Why a per-pixel random map scores well on deletion: the same maps against smooth random maps.

    python benchmarks/deletion_baselines.py [--checkpoint shipped] [--data sample] [--limit 64]
                                            [--method gradcam] [--layer layer4] [--threads 1]

Deletion blurs away pixels most important first. A per-pixel random map (camlens's `random`
baseline) scatters the deleted pixels over the whole image, and scattered blurred pixels are
high-frequency damage the model has never seen: the target probability falls fast whichever
pixels go. The signature is that such a map is "good" at deletion and bad at insertion at the
same time (both AUCs low), which no ranking of pixels by importance can explain. A random map
as smooth as the CAM (random values on the layer's own grid, upsampled the same way) moves
pixels in blobs like the CAM does, so it separates "this ranking is informative" from "this
shape of perturbation is destructive". Nothing is tuned: every map is scored by the same
`perturbation_curves` call, on the most confident mistakes (maps of the predicted class).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from camlens.cam import create
from camlens.compare import select_subsets
from camlens.data import load_dataset
from camlens.evaluate import predict
from camlens.metrics import MetricConfig, baseline_maps, bootstrap_ci, perturbation_curves
from camlens.metrics.core import trapezoid_auc
from camlens.model import load_checkpoint


def smooth_random(n: int, grid: tuple[int, int], size: tuple[int, int], g) -> torch.Tensor:
    """(N, H, W) random values on a coarse grid, bilinearly upsampled like a CAM."""
    coarse = torch.rand((n, 1, *grid), generator=g)
    return F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)[:, 0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="shipped")
    p.add_argument("--data", default="sample")
    p.add_argument("--limit", type=int, default=64)
    p.add_argument("--method", default="gradcam")
    p.add_argument("--layer", default="layer4")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, _ = load_checkpoint(args.checkpoint)
    data = load_dataset(args.data, progress=False)
    logits = predict(model, data.test.images)
    idx = select_subsets(logits, data.test.labels, args.limit)["mistakes"]
    images = data.test.images[idx].float() / 255  # (N, 3, H, W)
    preds = logits[idx].argmax(1)
    n, _, h, w = images.shape
    with create(args.method, model, args.layer) as engine:
        result = engine.explain(images, preds)
    maps, grid = result.maps, result.resolutions[0]  # (N, H, W); the layer's (h, w)
    g = torch.Generator().manual_seed(0)
    candidates = {
        f"{args.method} {args.layer}": maps,
        f"inverse {args.method}": 1 - maps,
        "random (per pixel)": baseline_maps(images.shape, "random", g),
        f"random {grid[0]}x{grid[1]} upsampled": smooth_random(n, grid, (h, w), g),
        "random 8x8 upsampled": smooth_random(n, (8, 8), (h, w), g),
        "centre": baseline_maps(images.shape, "centre"),
    }
    print(
        f"{n} most confident mistakes of {args.checkpoint} on {args.data}; "
        "maps of the predicted class"
    )
    for replacement in ("blur", "mean"):
        config = MetricConfig(replacement=replacement)
        print(
            f"\nreplacement {replacement}: AUC mean [95% CI]; mean probability after 0, 1/16,"
            " 2/16, 4/16, 8/16 of the pixels deleted"
        )
        print(f"{'map':26s} {'deletion (lower)':20s} {'insertion (higher)':20s} deletion curve")
        for name, m in candidates.items():
            curves = perturbation_curves(model, images, m, preds, config)
            cells = []
            for kind in ("deletion", "insertion"):
                mean, low, high = bootstrap_ci(trapezoid_auc(*curves[kind]))
                cells.append(f"{mean:.3f} [{low:.2f}, {high:.2f}]")
            y = curves["deletion"][1].mean(0)
            steps = " ".join(f"{y[i]:.2f}" for i in (0, 1, 2, 4, 8))
            print(f"{name:26s} {cells[0]:20s} {cells[1]:20s} {steps}")


if __name__ == "__main__":
    main()
