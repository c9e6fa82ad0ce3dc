"""Every CAM method and every faithfulness metric on CUDA against the same call on the CPU.

    python benchmarks/cuda_parity.py [--checkpoint shipped] [--data sample] [--images 16]

Prints one row per method (max |CUDA - CPU| over the maps, the lowest per-map Pearson) and per
metric (max |CUDA - CPU| over the per-image scores), each with its verdict against the stated
tolerance, and exits 1 if any row fails. Without a CUDA device it says so and exits 0, so a CPU
rehearsal of benchmarks/gpu_session.sh runs it too.

TF32 as the CLI runs it: this script leaves PyTorch's flags at their defaults (cuDNN's TF32 on)
and prints them; camlens turns TF32 off inside every CAM, metric and counterfactual call
(camlens/cam/precision.py), so both devices compute in fp32. Tolerance: what is left is the
order of floating-point sums in cuDNN's convolutions against oneDNN's (relative ~1e-6 per
layer, ~1e-5 through a ResNet18). Maps are in [0, 1] after min-max normalisation, so 1e-3
absolute is 100x that floor while a wrong map (a missed ReLU, a wrong sign, another class) is
off by > 0.1.
Methods with random draws (SmoothGrad-CAM++'s noise, the metrics' ROAD noise) draw on the CPU
in both runs, so the draws are the same; a metric's score is compared to 2e-3 absolute (a
deletion curve is a mean of K softmax outputs, each within ~1e-5).

Last, TF32 measured where tests/rounding only emulates it: Grad-CAM at layer3 of the first
`--tf32-images` images on CUDA, under camlens's policy and with TF32 turned back on inside the
model's forward (what the maps would be without the policy), each against the CPU's fp32 maps:
how many maps moved by more than 0.01 and 0.1 (docs/performance.md has the emulated figures).
"""

from __future__ import annotations

import argparse
import sys

import torch

MAP_TOLERANCE = 1e-3
SCORE_TOLERANCE = 2e-3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="shipped")
    parser.add_argument("--data", default="sample", help="camlens data source (test split)")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--layer", default="layer4")
    parser.add_argument("--tf32-images", type=int, default=256)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("SKIP cuda_parity: no CUDA device (nothing compared)")
        return 0
    print(
        "TF32 flags as the CLI leaves them: cuda.matmul.allow_tf32="
        f"{torch.backends.cuda.matmul.allow_tf32}, cudnn.allow_tf32="
        f"{torch.backends.cudnn.allow_tf32} (camlens turns both off inside its calls)"
    )

    from camlens.cam import METHODS, create
    from camlens.classifier import ModelConfig, open_model
    from camlens.evaluate import as_float_images
    from camlens.metrics import METRICS, MetricConfig, score_maps

    opened = open_model(ModelConfig(args.checkpoint), args.data, "cpu", progress=False)
    cpu_model = opened.model.eval()
    gpu_model = open_model(ModelConfig(args.checkpoint), opened.data, "cuda").model.eval()
    images = as_float_images(opened.data.test.images[: args.images])  # (N, 3, H, W)
    with torch.no_grad():
        targets = cpu_model(images).argmax(1)
    failed = 0
    print(f"{'method':22} {'max |diff|':>11} {'min pearson':>12}  verdict (tol {MAP_TOLERANCE})")
    for method in METHODS:
        layers = ["layer3", "layer4"] if method == "refinecam" else [args.layer]
        pair = []
        for model, device in ((cpu_model, "cpu"), (gpu_model, "cuda")):
            torch.manual_seed(0)  # stochastic methods draw the same noise on both runs
            try:
                with create(method, model, layers) as engine:
                    pair.append(engine(images.to(device), targets.to(device)).float().cpu())
            except ValueError as e:  # e.g. CAM needs the layer feeding GAP -> fc
                pair.append(None)
                print(f"{method:22} skipped: {e}")
                break
        if pair[-1] is None:
            continue
        diff = (pair[0] - pair[1]).abs().max().item()
        a, b = (m.flatten(1) - m.flatten(1).mean(1, keepdim=True) for m in pair)
        pearson = ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)).min()
        ok = diff <= MAP_TOLERANCE
        failed += not ok
        print(f"{method:22} {diff:11.2e} {pearson.item():12.6f}  {'ok' if ok else 'FAIL'}")

    with create("gradcam", cpu_model, [args.layer]) as engine:
        maps = engine(images, targets).detach()
    config = MetricConfig(seed=0)
    scores = []
    for model, device in ((cpu_model, "cpu"), (gpu_model, "cuda")):
        with create("gradcam", model, [args.layer]) as engine:
            s = score_maps(
                model,
                images.to(device),
                maps.to(device),
                targets.to(device),
                engine=engine,
                config=config,
            )
        scores.append({k: v.double().cpu() for k, v in s.values.items()})
    print(f"\n{'metric':22} {'max |diff|':>11}  verdict (tol {SCORE_TOLERANCE})")
    for name in scores[0]:
        diff = (scores[0][name] - scores[1][name]).abs().max().item()
        ok = diff <= SCORE_TOLERANCE
        failed += not ok
        print(f"{name:22} {diff:11.2e}  {'ok' if ok else 'FAIL'}")
    tf32_rows(cpu_model, gpu_model, opened.data, args.tf32_images)
    print(f"\n{failed} row(s) outside tolerance; metrics scored: {', '.join(METRICS)}")
    return 1 if failed else 0


def tf32_rows(cpu_model, gpu_model, data, count: int) -> None:
    """Layer3 Grad-CAM on CUDA, with the policy and with TF32 forced on, against the CPU."""
    from camlens.cam import create
    from camlens.evaluate import as_float_images

    images = as_float_images(data.test.images[:count])  # (N, 3, H, W)
    with create("gradcam", cpu_model, "layer3", batch_size=64) as engine:
        want = engine(images)

    def tf32_on(module, args):  # runs inside the engine's call, after the policy's switch
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True

    print(f"\nGrad-CAM layer3, {len(images)} images, CUDA against the CPU's fp32 maps")
    for label, forced in (("camlens's policy (TF32 off)", False), ("TF32 forced on", True)):
        hook = gpu_model.register_forward_pre_hook(tf32_on) if forced else None
        with create("gradcam", gpu_model, "layer3", batch_size=64) as engine:
            got = engine(images.cuda()).cpu()
        if hook is not None:
            hook.remove()
        diff = (got - want).abs().flatten(1).amax(1)  # (N,)
        print(
            f"{label:28} > 0.01: {int((diff > 0.01).sum())}/{len(images)}  "
            f"> 0.1: {int((diff > 0.1).sum())}/{len(images)}  max {diff.max().item():.2e}"
        )


if __name__ == "__main__":
    sys.exit(main())
