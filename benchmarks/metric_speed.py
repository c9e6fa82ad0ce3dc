"""What each faithfulness metric costs per image, against a plain forward pass of the same images.

    python benchmarks/metric_speed.py [--n 16] [--device cpu|cuda] [--threads N] [--batch 256]
                                      [--steps 16] [--checkpoint shipped] [--repeats 2]
                                      [--quick]

A K-step deletion curve needs at least K forward passes per image (the K - 1 partly deleted
images and the fully replaced one; the unperturbed image is the plain forward every metric
shares), so its floor is the time of K plain forward passes per image.
For each metric the table gives the forward passes it makes per image, its time per image, and
"x floor": its time over that of plain forwards of as many images in the same chunks; 1.00
would mean the metric costs nothing but its forwards. ROAD adds an imputation solve per
perturbed image; ARCC adds ROAD at four fractions and one more Grad-CAM (its coherency).
Nothing is asserted: the figures depend on the machine; on a machine shared with other work,
--threads 1 gives steadier ratios.

The model is the shipped CIFAR ResNet18 (or --checkpoint), the images the first --n of the
bundled sample's test split, the maps Grad-CAM at layer4 of the predicted class.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from camlens.cam import create
from camlens.data import load_dataset
from camlens.metrics import MetricConfig, score_maps
from camlens.model import load_checkpoint


def seconds(fn, device: torch.device, repeats: int) -> float:
    """The fastest of `repeats` calls: the least disturbed by other work on the machine."""
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=16, help="images (default 16)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--batch", type=int, default=256, help="perturbed images per forward")
    parser.add_argument("--steps", type=int, default=16, help="deletion/insertion steps K")
    parser.add_argument("--checkpoint", default="shipped")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs, the fastest kept")
    parser.add_argument("--quick", action="store_true", help="4 images, 8 steps: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.n, args.steps, args.repeats = 4, 8, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, _ = load_checkpoint(args.checkpoint, device=device)
    data = load_dataset("sample", progress=False)
    images = (data.test.images[: args.n].float() / 255).to(device)
    n = images.shape[0]
    with torch.no_grad():
        preds = model(images).argmax(1)
    cam = create("gradcam", model, "layer4")
    maps = cam(images, preds)
    config = MetricConfig(batch_size=args.batch, steps=args.steps)
    k, nf = config.steps, len(config.road_fractions)

    def floor(forwards: int) -> float:
        """Seconds for plain forwards of `forwards` copies of every image, in the same chunks."""
        copies = images.repeat(forwards, 1, 1, 1)

        def run() -> None:
            with torch.no_grad():
                for start in range(0, copies.shape[0], args.batch):
                    model(copies[start : start + args.batch])

        return seconds(run, device, args.repeats)

    floor(1)  # warm-up
    forward = floor(1) / n
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads; "
        f"{n} images 32x32, batch {args.batch}, K = {k}"
    )
    print(f"plain forward of the {n} images: {forward * 1e3:.2f} ms per image\n")
    # forward passes per image, the plain one every metric starts with included
    runs = [
        ("deletion", ("deletion",), 1 + k),
        ("deletion+insertion", ("deletion", "insertion"), 1 + 2 * k - 1),
        ("drop+increase", ("drop", "increase"), 2),
        ("road", ("road",), 1 + 2 * nf),
        ("arcc (+1 Grad-CAM)", ("arcc",), 1 + 2 * len(config.arcc_fractions) + 1),
        ("all six", ("deletion", "insertion", "drop", "increase", "road", "arcc"), None),
    ]
    print(f"{'metric':20s} {'forwards':>8s} {'ms/image':>9s} {'x forward':>10s} {'x floor':>8s}")
    for name, metrics, forwards in runs:
        if forwards is None:  # road's fractions include arcc's: no extra ROAD forwards
            forwards = 1 + (2 * k - 1) + 1 + 2 * nf + 1

        def run(m: tuple[str, ...] = metrics) -> None:
            score_maps(model, images, maps, preds, m, cam, config)

        t = seconds(run, device, args.repeats)
        per = t / n
        print(
            f"{name:20s} {forwards:8d} {per * 1e3:9.1f} {per / forward:10.1f} "
            f"{t / floor(forwards):8.2f}"
        )


if __name__ == "__main__":
    main()
