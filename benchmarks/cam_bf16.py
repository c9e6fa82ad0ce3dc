"""Grad-CAM throughput in fp32 and bf16 autocast at one batch size, and the bf16 maps' agreement.

    python benchmarks/cam_bf16.py [--device cuda] [--batch 256] [--images 1024] [--data sample]

The shipped model (`--model shipped`) and the first `--images` test images of `--data`:
Grad-CAM of the predicted class at layer3 and layer4 (one forward, one backward per batch),
timed over `--repeats` passes after a warm-up one (median), in fp32 (TF32 off inside, the
library's policy) and in bf16 autocast (maps combined in fp32). Prints images/s for each, the
speed-up, and the Pearson correlation of each bf16 map with its fp32 map (median, 1st
percentile, worst; a flat map against a varied one counts 0, benchmarks/helpers.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from helpers import pearson


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--data", default="sample")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from camlens.cam import create
    from camlens.classifier import ModelConfig, open_model
    from camlens.evaluate import as_float_images

    device = torch.device(args.device)
    opened = open_model(ModelConfig("shipped"), args.data, device, progress=False)
    model = opened.model.eval()
    images = as_float_images(opened.data.test.images[: args.images]).to(device)  # (N, 3, H, W)
    n = images.shape[0]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    maps, speed = {}, {}
    for precision in ("fp32", "bf16"):
        with create("gradcam", model, ["layer3", "layer4"], precision=precision) as cam:
            cam(images[: args.batch])  # warm-up: cuDNN's kernel choice, the allocator
            times = []
            for _ in range(args.repeats):
                sync()
                t0 = time.perf_counter()
                out = [cam(images[i : i + args.batch]) for i in range(0, n, args.batch)]
                sync()
                times.append(time.perf_counter() - t0)
        maps[precision] = torch.cat(out).float().cpu()  # (N, H, W)
        speed[precision] = n / statistics.median(times)
    r = pearson(maps["bf16"], maps["fp32"]).sort().values  # (N,)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"Grad-CAM layer3+layer4, shipped model, {n} images of {args.data}, batch {args.batch}")
    print(f"device {name}; torch {torch.__version__}; median of {args.repeats} passes")
    for precision in ("fp32", "bf16"):
        print(f"{precision}: {speed[precision]:9.0f} img/s")
    print(f"bf16 / fp32: {speed['bf16'] / speed['fp32']:.2f}x")
    print(
        f"bf16 maps vs fp32: Pearson median {r[len(r) // 2]:.4f}, "
        f"1st percentile {r[len(r) // 100]:.4f}, worst {r[0]:.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
