"""How fast camlens.cam is, measured figures and ratios side by side (nothing is asserted).

    python benchmarks/cam_speed.py [--quick] [--device cpu|cuda] [--threads N] [--batch 64]
                                   [--checkpoint PATH] [--data SOURCE] [--with-path DIR]

(a) one Grad-CAM (layer4, layer3) vs a plain forward of the same batch (target >= 0.95x at
    layer4);
(b) the mission workload: Grad-CAM of the predicted and the true class at layer3 and layer4
    (4 maps per image) in chunks, one forward + partial backwards per chunk, vs one map per call
    (target >= 3x);
(c) opt-in bf16 autocast with maps in fp32: speed-up and agreement with fp32;
(d) Score-CAM at layer4 with batched masks: images/s; top-k channels: speed-up and Spearman
    correlation with the full map;
(e) SmoothGrad-CAM++ vs Grad-CAM++ at layer4: the image and its n noisy copies in one pass,
    so the limit is about (1 + n)x Grad-CAM++'s forward + backward.
(f) Finer-CAM, RefineCAM (layer3+layer4), FullGrad, Guided Grad-CAM: time per batch against a
    plain forward, and the anchors' same method in the same run where they import (their
    callables come from benchmarks/helpers.py).
(g) Ablation-CAM, KPCA-CAM, ShapleyCAM, SS-CAM and IS-CAM at layer4: each one's cost against
    a plain forward of the same images, and the anchor's (pytorch-grad-cam, torchcam, from
    benchmarks/helpers.py) in the same run where it imports.
captum and torchcam are timed beside camlens where importable (`--with-path DIR` adds a
folder, e.g. one made by `pip install --target DIR --no-deps captum torchcam`). pytorch-grad-cam
needs torchvision, which does not import beside the CPU torch here: to time all four in one
run, run this script from a separate venv with `torch==2.14.1 torchvision==0.29.1 grad-cam
captum torchcam` and camlens installed (README, Performance).

The model is a full-width CIFAR ResNet18 (11.2 M parameters), random init unless --checkpoint;
the images are uniform noise unless --data names a camlens data source (test split).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial

import torch

from camlens.cam import (
    GradCAM,
    GradCAMPlusPlus,
    ScoreCAM,
    SmoothGradCAMPlusPlus,
    create,
)
from camlens.model import ResNet18, load_checkpoint
from helpers import (
    ablation_kpca_shapley_ss_is_anchors,
    finer_refine_pixel_anchors,
    minmax,
    pearson,
    spearman,
)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def load_inputs(args: argparse.Namespace, device: torch.device):
    if args.checkpoint:
        model, meta = load_checkpoint(args.checkpoint, device=device)
        note = f"checkpoint {args.checkpoint} (epoch {meta.get('epoch', '?')})"
    else:
        torch.manual_seed(0)
        model = ResNet18().to(device).eval()
        note = "random-init ResNet18 (pass --checkpoint for a trained one)"
    n = args.images
    if args.data:
        from camlens.data import load_dataset

        test = load_dataset(args.data, progress=False).test
        images = test.images[:n].float().div(255).to(device)
        labels = test.labels[:n].to(device)
        note += f", first {len(labels)} test images of {args.data}"
    else:
        gen = torch.Generator().manual_seed(1)
        images = torch.rand(n, 3, 32, 32, generator=gen).to(device)
        labels = torch.randint(0, 10, (n,), generator=gen).to(device)
        note += ", uniform-noise images"
    return model, images, labels, note


def external_gradcams(model: torch.nn.Module) -> dict[str, Callable]:
    """Other libraries' Grad-CAM at layer4 as `fn(images, targets) -> (N, H, W)`, if importable."""
    found: dict[str, Callable] = {}
    try:
        from captum.attr import LayerAttribution, LayerGradCam

        def captum_gradcam(images, targets, layer="layer4"):
            attr = LayerGradCam(model, getattr(model, layer)).attribute(
                images, target=targets, relu_attributions=True
            )
            return minmax(LayerAttribution.interpolate(attr, images.shape[-2:], "bilinear")[:, 0])

        found["captum LayerGradCam"] = captum_gradcam
    except ImportError as e:
        print(f"  captum: not installed ({e})")
    try:
        import torch.nn.functional as F
        from torchcam.methods import GradCAM as TorchcamGradCAM

        def torchcam_gradcam(images, targets, layer="layer4"):
            with TorchcamGradCAM(model, target_layer=layer) as extractor:
                scores = model(images)
                maps = extractor(class_idx=targets.tolist(), scores=scores)[0]
            maps = F.interpolate(maps[:, None], images.shape[-2:], mode="bilinear")[:, 0]
            return minmax(maps.detach())

        found["torchcam GradCAM"] = torchcam_gradcam
    except ImportError as e:
        print(f"  torchcam: not installed ({e})")
    try:
        from pytorch_grad_cam import GradCAM as PgcGradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        def pgc_gradcam(images, targets, layer="layer4"):
            # its usual use: a CAM object per call; it resizes and min-max scales in numpy
            with PgcGradCAM(model=model, target_layers=[getattr(model, layer)]) as cam:
                maps = cam(images, [ClassifierOutputTarget(int(t)) for t in targets])
            return minmax(torch.from_numpy(maps).to(images.device))

        found["pytorch-grad-cam"] = pgc_gradcam
    except Exception as e:  # it fails in several ways without torchvision / ttach / cv2
        print(f"  pytorch-grad-cam: unavailable ({type(e).__name__}: {e})")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and repeats")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--batch", type=int, default=64, help="images per forward pass")
    parser.add_argument("--checkpoint", default=None, help="a camlens .safetensors checkpoint")
    parser.add_argument("--data", default=None, help="camlens data source for real images")
    parser.add_argument("--with-path", action="append", default=[], help="extra sys.path dir")
    args = parser.parse_args(argv)
    sys.path.extend(args.with_path)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    batch = args.batch
    args.images = max(batch, 128 if args.quick else 512)
    repeats = 3 if args.quick else 5
    score_images = (8 if args.quick else 32) if gpu else (1 if args.quick else 2)

    model, images, labels, note = load_inputs(args, device)
    where = (
        torch.cuda.get_device_name(device)
        if gpu
        else f"{platform.machine()}, {os.cpu_count()} cores"
    )
    print(
        f"device: {device} ({where}), torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    print(f"model: {note}")
    x = images[:batch]

    print(f"\n(a) one Grad-CAM vs a plain forward, batch {batch}, fp32")
    with torch.no_grad():
        forward = timed(lambda: model(x), device, repeats)
    print(f"  plain forward (no_grad)        {forward * 1e3:8.1f} ms")
    maps = {}
    for layer in ("layer4", "layer3"):
        cam = GradCAM(model, layer)
        t = timed(lambda cam=cam: cam(x), device, repeats)
        maps[layer] = cam(x)
        ratio = forward / t
        print(f"  camlens GradCAM @{layer}        {t * 1e3:8.1f} ms   forward/this = {ratio:.2f}x")
    preds = model(x).argmax(1)
    external = external_gradcams(model)
    for name, fn in external.items():
        t = timed(lambda fn=fn: fn(x, preds), device, repeats)
        diff = (fn(x, preds) - maps["layer4"]).abs().max().item()
        print(
            f"  {name:<22} @layer4 {t * 1e3:8.1f} ms   forward/this = {forward / t:.2f}x"
            f"   (max |diff| to camlens {diff:.1e})"
        )

    print(
        f"\n(b) mission: {len(images)} images, pred + true class at layer3 + layer4, chunks of 64"
    )
    both = GradCAM(model, ["layer3", "layer4"])
    single = {layer: GradCAM(model, layer) for layer in ("layer3", "layer4")}

    def camlens_mission():
        for s in range(0, len(images), batch):
            both.explain_many(images[s : s + batch], [None, labels[s : s + batch]])

    def one_map_per_call():
        for s in range(0, len(images), batch):
            chunk, truth = images[s : s + batch], labels[s : s + batch]
            for cam in single.values():
                cam(chunk)
                cam(chunk, truth)

    mission = timed(camlens_mission, device, 1)
    per_call = timed(one_map_per_call, device, 1)
    rate = 4 * len(images) / mission
    print(f"  camlens, one forward per chunk {mission:8.2f} s   ({rate:,.0f} maps/s)")
    print(f"  camlens, one map per call      {per_call:8.2f} s   ratio {per_call / mission:.2f}x")
    if external:
        # the other libraries run on a slice of the images to keep the run short; camlens's time
        # on the same slice is scaled from its full run, which is linear in the chunk count
        part = min(len(images), 2 * batch)
        print(f"  other libraries, one map per call, on the first {part} images:")
        for name, fn in external.items():

            def lib_mission(fn=fn):
                for s in range(0, part, batch):
                    chunk, truth = images[s : s + batch], labels[s : s + batch]
                    chunk_preds = model(chunk).argmax(1)
                    for layer in ("layer3", "layer4"):
                        fn(chunk, chunk_preds, layer)
                        fn(chunk, truth, layer)

            t = timed(lib_mission, device, 1)
            ratio = t / (mission * part / len(images))
            print(f"  {name:<30} {t:8.2f} s   camlens is {ratio:.2f}x faster")

    print("\n(c) bf16 autocast (opt-in), maps in fp32: GradCAM at layer3 + layer4, pred class")
    amp = GradCAM(model, ["layer3", "layer4"], precision="bf16")
    fp32_time = timed(lambda: both(x), device, repeats)
    bf16_time = timed(lambda: amp(x), device, repeats)
    corr, changed = [], 0
    for s in range(0, len(images), batch):
        chunk = images[s : s + batch]
        ref = both.explain(chunk)
        # explain the fp32 prediction in both, so that a flipped prediction is counted, not mixed in
        low = amp.explain(chunk, ref.targets)
        changed += int((low.preds != ref.preds).sum())
        corr += [pearson(low.layer_maps[i], ref.layer_maps[i]) for i in range(2)]
    corr = torch.cat(corr)
    print(f"  fp32 {fp32_time * 1e3:.1f} ms, bf16 {bf16_time * 1e3:.1f} ms per batch of {batch}:")
    print(f"  bf16 speed-up {fp32_time / bf16_time:.2f}x")
    print(
        f"  per-map Pearson bf16 vs fp32 over {len(corr)} maps: median {corr.median():.4f}, "
        f"worst {corr.min():.4f}; changed predictions {changed} / {len(images)}"
    )

    print(f"\n(d) Score-CAM @layer4, {score_images} images, 512 channels, masks batched 256")
    z = images[:score_images]
    full_cam = ScoreCAM(model, "layer4", score_batch=256)
    full_time = timed(lambda: full_cam(z), device, 1 if not gpu else repeats)
    full = full_cam(z)
    print(f"  full          {full_time:8.2f} s   {score_images / full_time:8.2f} images/s")
    for k in (128, 64, 32):
        fast_cam = ScoreCAM(model, "layer4", batch=256, top_k=k)
        t = timed(lambda fast_cam=fast_cam: fast_cam(z), device, 1 if not gpu else repeats)
        rho = spearman(fast_cam(z), full)
        print(
            f"  top-{k:<3}       {t:8.2f} s   {score_images / t:8.2f} images/s   "
            f"speed-up {full_time / t:.1f}x   "
            f"Spearman median {rho.median():.3f} worst {rho.min():.3f}"
        )

    smooth = SmoothGradCAMPlusPlus(model, "layer4")
    copies = 1 + smooth.config.smooth_samples
    print(f"\n(e) SmoothGrad-CAM++ vs Grad-CAM++ @layer4, batch {batch}, limit ~{copies}x")
    plus_time = timed(lambda: GradCAMPlusPlus(model, "layer4")(x), device, repeats)
    smooth_time = timed(lambda: smooth(x), device, repeats)
    print(f"  Grad-CAM++       {plus_time * 1e3:8.1f} ms")
    print(f"  SmoothGrad-CAM++ {smooth_time * 1e3:8.1f} ms   {smooth_time / plus_time:.2f}x")
    finer_refine_fullgrad_guided(model, x, preds, forward, device, repeats)
    ablation_kpca_shapley_ss_is(model, x, z, device, repeats, gpu)
    return 0


def finer_refine_fullgrad_guided(model, x, preds, forward, device, repeats) -> None:
    """(f): Finer-CAM, RefineCAM, FullGrad and Guided Grad-CAM, and the anchors' same methods."""
    print(f"\n(f) per batch of {len(x)}, fp32, plain forward {forward * 1e3:.1f} ms")
    cases = [
        ("finercam", "layer4", "one forward + one backward, as Grad-CAM"),
        ("refinecam", "layer3+layer4", "one forward + one backward for both layers"),
        ("fullgrad", "layer4", "one forward + one backward to the image"),
        ("guidedgradcam", "layer4", "one forward + two backwards"),
    ]
    others = finer_refine_pixel_anchors(model)
    for method, layer, limit in cases:
        cam = create(method, model, layer.split("+"))
        t = timed(lambda cam=cam: cam(x, preds), device, repeats)
        print(
            f"  camlens {method:<14} @{layer:<14} {t * 1e3:8.1f} ms   {t / forward:5.2f}x forward"
            f"   ({limit})"
        )
        for name, at, anchor, fn in others:
            if (name, at) == (method, layer):
                a = timed(lambda fn=fn: fn(x, preds), device, 1)
                print(f"    {anchor:<29} {a * 1e3:8.1f} ms   {a / forward:5.2f}x forward")


def ablation_kpca_shapley_ss_is(model, x, z, device, repeats, gpu) -> None:
    """(g) cost against a plain forward; the methods with a pass per channel on fewer images."""
    few = x if gpu else x[:8]  # Ablation-CAM: one pass of the tail per channel and image
    cases = [("kpcacam", x), ("shapleycam", x), ("ablationcam", few), ("sscam", z), ("iscam", z)]
    print(
        "\n(g) Ablation-CAM, KPCA-CAM, ShapleyCAM, SS-CAM, IS-CAM @layer4, fp32, vs a plain forward"
    )
    for method, images in cases:
        cam = create(method, model, "layer4")
        found = ablation_kpca_shapley_ss_is_anchors(model, "layer4", cam.config.score_samples)
        with torch.no_grad():
            targets = model(images).argmax(1)
            forward = timed(partial(model, images), device, repeats)
        runs = 1 if method in ("ablationcam", "sscam", "iscam") and not gpu else repeats
        t = timed(partial(cam, images, targets), device, runs)
        print(
            f"  camlens {method:<12} {len(images):3d} images {t * 1e3:10.1f} ms"
            f"   this/forward = {t / forward:8.1f}x"
        )
        if method in found:
            fn, name = found[method]
            ta = timed(partial(fn, images, targets), device, runs)
            print(f"    {name}: {ta * 1e3:10.1f} ms   camlens is {ta / t:.2f}x faster")


if __name__ == "__main__":
    raise SystemExit(main())
