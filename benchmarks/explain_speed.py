"""Where `camlens explain` spends its time and memory: maps, drawing, encoding, writing.

    python benchmarks/explain_speed.py --data DATA [--checkpoint shipped] [--weak CKPT]
                                       [--limit 3500] [--layer layer3,layer4] [--png]

Each case runs in a fresh process, so that its peak memory (RSS) is its own: the shipped model
explaining all its test mistakes, and with `--weak` a weak checkpoint (e.g. one epoch of
`camlens train`) explaining its `--limit` most confident mistakes. Per case it prints, in one
run: the CAM-only time of the same images (the maps without any picture), the whole streamed
gallery's wall time and its split (maps, overlays and pair pages as wall seconds of the main
thread; drawing cards, encoding and writing as thread seconds summed over the pool), peak
RSS, the gallery's size on disk, and the target: total / (CAM-only + encoding /
cores). `--png` also measures PNG settings on 32 of the shipped model's cards.
Nothing is asserted: timings depend on the machine and what else runs on it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch


def case(args: argparse.Namespace) -> dict:
    """One checkpoint's figures, in this process (run by `main` in a subprocess each)."""
    from camlens.classifier import ModelConfig, open_model
    from camlens.evaluate import find_mistakes, predict
    from camlens.explain import ExplainPlan, select_mistakes, stream_mistake_maps
    from camlens.pipeline import write_galleries

    opened = open_model(ModelConfig(args.case), args.data, progress=False)
    model, data = opened.model, opened.data
    layers = args.layer.split(",")
    mistakes = find_mistakes(predict(model, data.test.images, 256), data.test.labels)
    chosen = select_mistakes(mistakes, data.classes, limit=args.limit)
    chosen = type(chosen)(
        *[getattr(chosen, f) for f in ("indices", "labels", "preds", "probs", "margins")],
        images=data.test.images[chosen.indices],
    )
    began = time.perf_counter()
    for _ in stream_mistake_maps(model, chosen, ExplainPlan(layers=layers)):
        pass
    cam_only = time.perf_counter() - began
    with tempfile.TemporaryDirectory() as out:
        began = time.perf_counter()
        plan = ExplainPlan(layers=layers, limit=args.limit)
        galleries = write_galleries(model, data, out, plan, mistakes=chosen)
        total = time.perf_counter() - began
        folder = galleries.folders["gradcam"]
        disk = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return {
        "mistakes": len(chosen),
        "cam_only": cam_only,
        "total": total,
        "split": galleries.seconds["gradcam"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "disk_mb": disk / 1e6,
    }


def png_settings(args: argparse.Namespace) -> None:
    """Time and size per card of PIL's PNG levels, palette PNG and camlens's joined rows."""
    from PIL import Image

    from camlens.classifier import ModelConfig, open_model
    from camlens.evaluate import find_mistakes, predict
    from camlens.explain import ExplainPlan, mistake_maps
    from camlens.gallery import GalleryConfig
    from camlens.gallery.draw import CardLayout, draw_card, draw_panels
    from camlens.gallery.png import deflate_rows, png_of

    opened = open_model(ModelConfig(args.checkpoint), args.data, progress=False)
    model, data = opened.model, opened.data
    test = data.test
    m = find_mistakes(predict(model, test.images[:2000], 256), test.labels[:2000])
    m = m.select(torch.arange(min(32, len(m))))
    m = type(m)(m.indices, m.labels, m.preds, m.probs, m.margins, test.images[m.indices])
    expl = mistake_maps(model, m.images, m.labels, ExplainPlan(layers=args.layer.split(",")))
    config = GalleryConfig()
    panels, layout = draw_panels(expl, m.images, config), CardLayout.of(expl, data.classes, config)
    cards = [draw_card(i, m, expl, panels, data.classes, layout) for i in range(len(m))]

    def pil(level: int, palette: bool = False):
        def encode(pixels: np.ndarray) -> bytes:
            img = Image.fromarray(pixels)
            img = img.quantize(256, method=Image.Quantize.FASTOCTREE) if palette else img
            buf = io.BytesIO()
            img.save(buf, format="PNG", compress_level=level)
            return buf.getvalue()

        return encode

    settings = {f"PIL PNG level {k}": pil(k) for k in (1, 6, 9)}
    settings["PIL palette (256 colours) level 6"] = pil(6, palette=True)
    for k in (1, 3, 6):
        settings[f"camlens rows (Sub/Up) level {k}"] = lambda p, k=k: png_of([deflate_rows(p, k)])
    h, w, _ = cards[0].shape
    print(f"\nPNG settings, {len(cards)} cards of {w}x{h} px, 1 thread")
    print(f"{'setting':38s} {'ms/card':>8s} {'KB/card':>8s}")
    for name, encode in settings.items():
        began = time.perf_counter()
        sizes = [len(encode(c)) for c in cards]
        ms = (time.perf_counter() - began) / len(cards) * 1000
        print(f"{name:38s} {ms:8.1f} {np.mean(sizes) / 1024:8.1f}")
    print("palette: smaller and faster, but bands the maps visibly (rejected for the gallery)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="the test images (e.g. $JPEG)")
    parser.add_argument("--checkpoint", default="shipped")
    parser.add_argument("--weak", default=None, help="a weak checkpoint: thousands of mistakes")
    parser.add_argument("--limit", type=int, default=3500, help="mistakes of --weak explained")
    parser.add_argument("--layer", default="layer3,layer4")
    parser.add_argument("--png", action="store_true", help="also measure PNG settings")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # the subprocess
    args = parser.parse_args()
    if args.case is not None:
        args.limit = None if args.limit < 0 else args.limit
        print(json.dumps(case(args)))
        return
    cores = os.cpu_count() or 1
    print(f"{cores} cores, torch {torch.__version__}, {torch.get_num_threads()} torch threads")
    head = (
        f"{'checkpoint':>10s} {'mistakes':>8s} {'CAM-only':>8s} {'total':>7s} {'maps':>6s} "
        f"{'overlay':>7s} {'draw*':>6s} {'encode*':>7s} {'write*':>6s} {'pairs':>6s} "
        f"{'peak RSS':>9s} {'disk':>7s} {'total/target':>12s}"
    )
    print(head, flush=True)
    cases = [("shipped", args.checkpoint, -1)]
    if args.weak:
        cases.append(("weak", args.weak, args.limit))
    for name, ckpt, limit in cases:
        argv = [sys.executable, __file__, "--data", args.data, "--layer", args.layer]
        argv += ["--case", ckpt, "--limit", str(limit)]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
        r = json.loads(done.stdout.splitlines()[-1])
        s = r["split"]
        target = r["cam_only"] + s.get("encode", 0.0) / cores
        print(
            f"{name:>10s} {r['mistakes']:8d} {r['cam_only']:7.1f}s {r['total']:6.1f}s "
            f"{s.get('maps', 0):5.1f}s {s.get('overlays', 0):6.1f}s {s.get('draw', 0):5.1f}s "
            f"{s.get('encode', 0):6.1f}s {s.get('write', 0):5.1f}s {s.get('pair_pages', 0):5.1f}s "
            f"{r['peak_rss_mb']:7.0f}MB {r['disk_mb']:5.0f}MB {r['total'] / target:11.2f}x",
            flush=True,  # each case as it ends: the weak one takes minutes
        )
    print(
        "maps, overlay, pairs (pair pages): wall seconds of the main thread; * thread seconds\n"
        "  summed over the pool (drawing cards, encoding, writing), which runs beside it;\n"
        "  target: CAM-only + encoding / cores (the aim: total within 2x of it)"
    )
    if args.png:
        png_settings(args)


if __name__ == "__main__":
    main()
