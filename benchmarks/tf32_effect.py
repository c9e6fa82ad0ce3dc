"""What TF32 would do to camlens's maps, measured on the CPU (tests/rounding's TF32 emulation).

    python benchmarks/tf32_effect.py [--images 256] [--layers layer3,layer4] [--method gradcam]

Grad-CAM of the predicted class on the shipped model (`--model shipped`) and the first
`--images` images of the sample (`--data sample`), three times, each in a fresh process:
fp32; TF32 emulated on every convolution whatever the flags (CAMLENS_TEST_ROUNDING=tf32-always:
what a CUDA run gives if camlens left TF32 on, as PyTorch's default does for cuDNN); and TF32
emulated where the flags allow it (CAMLENS_TEST_ROUNDING=tf32: what a CUDA run gives under
camlens's policy, TF32 off inside the library). Prints, per layer, how many maps moved by more
than 0.01 and 0.1, the largest move, and whether the predictions changed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROUNDING = Path(__file__).resolve().parents[1] / "tests" / "rounding"


def maps(images: int, layers: list[str], method: str, out: str) -> None:
    """The child: each layer's maps and the predictions, saved to `out`."""
    from camlens.cam import create
    from camlens.classifier import ModelConfig, open_model
    from camlens.evaluate import as_float_images

    opened = open_model(ModelConfig("shipped"), "sample", "cpu", progress=False)
    model = opened.model.eval()
    x = as_float_images(opened.data.test.images[:images])  # (N, 3, H, W)
    saved = {}
    for layer in layers:
        with create(method, model, layer, batch_size=64) as cam:
            result = cam.explain(x)
        saved[layer] = result.maps  # (N, H, W)
        saved["preds"] = result.logits.argmax(1)
    torch.save(saved, out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--layers", default="layer3,layer4")
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    layers = args.layers.split(",")
    if args.child:
        maps(args.images, layers, args.method, args.child)
        return 0
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("fp32", "tf32-always", "tf32"):
            env = {**os.environ, "PYTHONPATH": str(ROUNDING), "CAMLENS_TEST_ROUNDING": mode}
            if mode == "fp32":
                env.pop("CAMLENS_TEST_ROUNDING")
            out = f"{tmp}/{mode}.pt"
            cmd = [sys.executable, __file__, "--images", str(args.images), "--child", out]
            cmd += ["--layers", args.layers, "--method", args.method]
            subprocess.run(cmd, env=env, check=True)
            runs[mode] = torch.load(out)
    n = args.images
    print(f"{args.method} of the predicted class, shipped model, {n} sample images, CPU")
    print(f"{'run':38} {'layer':7} {'> 0.01':>8} {'> 0.1':>8} {'max |diff|':>11}  preds changed")
    for mode, label in (
        ("tf32-always", "TF32 left on (PyTorch's default)"),
        ("tf32", "camlens's policy (TF32 off inside)"),
    ):
        changed = int((runs[mode]["preds"] != runs["fp32"]["preds"]).sum())
        for layer in layers:
            diff = (runs[mode][layer] - runs["fp32"][layer]).abs().flatten(1).amax(1)  # (N,)
            print(
                f"{label:38} {layer:7} {int((diff > 0.01).sum()):>5}/{n} "
                f"{int((diff > 0.1).sum()):>5}/{n} {diff.max().item():11.2e}  {changed}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
