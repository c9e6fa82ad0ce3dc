"""ImageNet scale on the CPU: camlens's evaluate against a bare DataLoader + model loop.

It writes an ImageNet-shaped folder first (`val/<class>/*.JPEG`, 1,000 classes, photos of
varied aspect ratio with sides 224-500 px, each a smooth background with class-dependent
shapes, not white noise), then, for each N, in a fresh process each (so peak RSS is the
stage's own):

    index     load_dataset: list the folder, read each header (cold: no index cached)
    evaluate  camlens.evaluate on the val split: decode + resize 256 + crop 224 in DataLoader
              workers, the model's forward, accuracy, confusion, mistakes
    bare      the same images through a plain torch Dataset (PIL open, RGB, Resize(256),
              CenterCrop(224)) and DataLoader with the same workers and batch, + the forward
    report    camlens.pipeline.report with its defaults (the 1,000 most confident mistakes,
              Grad-CAM; the counterfactual test is off at 224 px): evaluation, maps, gallery,
              report.html; also prints the cards, report.html's and the gallery's size

and prints per stage: seconds (best of --repeats, the stages alternated), images/s, peak
RSS of the main process and of the largest worker, and main + workers x largest worker (a
bound on the stage's total). The model is a small 1,000-class CNN by
default (`--model small`: the data path dominates, which is what is measured), or camlens's
ResNet18 (`--model resnet18`).

    python benchmarks/scale.py --n 2000,5000 --root /tmp/scale
    nice -n 10 python benchmarks/scale.py --n 5000,20000,50000 --stages index,evaluate,bare,report
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = 1000
SIDES = (224, 500)  # each side of a photo, drawn in this range
STAGES = ("index", "evaluate", "bare", "report")


# ----------------------------------------------------------------------------- the folder


def _photo(k: int, i: int) -> Image.Image:
    """Photo i of class k: a smooth two-colour gradient and a class-placed ellipse and bar."""
    rng = np.random.default_rng(k * 100_003 + i)
    w, h = (int(s) for s in rng.integers(SIDES[0], SIDES[1] + 1, 2))
    t = np.linspace(0, 1, w)[None, :, None] * np.ones((h, 1, 1))
    a, b = rng.integers(0, 256, (2, 3))
    img = Image.fromarray((a * (1 - t) + b * t).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    cx, cy = (k % 32 + 0.5) / 32 * w, (k // 32 + 0.5) / 32 * h  # where: the class
    r = min(w, h) * (0.15 + 0.1 * rng.random())
    colour = tuple(int(c) for c in ((k * 37) % 256, (k * 91) % 256, (k * 53) % 256))
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    draw.rectangle((0, h * 0.8, w * ((k % 10) + 1) / 10, h * 0.85), fill=colour[::-1])
    return img


def _write_class(args: tuple[Path, int, int]) -> None:
    root, k, per_class = args
    folder = root / "val" / f"n{k:08d}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(per_class):
        path = folder / f"ILSVRC_val_{k:04d}_{i:03d}.JPEG"
        if not path.exists():
            _photo(k, i).save(path, quality=85)


def write_folder(root: Path, n: int) -> Path:
    """`root`/val/<class>/*.JPEG, n images over CLASSES classes (kept between runs)."""
    per_class = max(1, n // CLASSES)
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_write_class, [(root, k, per_class) for k in range(CLASSES)], chunksize=8))
    return root


# ----------------------------------------------------------------------------- the stages


def _model(kind: str):
    import torch
    from torch import nn

    torch.manual_seed(0)
    if kind == "resnet18":
        from camlens.model import ResNet18

        return ResNet18(num_classes=CLASSES).eval()
    return nn.Sequential(  # 224 -> 7: four stride-4/2 steps, then a 1,000-way head
        nn.Conv2d(3, 16, 7, stride=4, padding=3), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, CLASSES),
    ).eval()  # fmt: skip


def _paths(root: Path) -> tuple[list[str], list[int]]:
    classes = sorted(p.name for p in (root / "val").iterdir())
    paths, labels = [], []
    for k, c in enumerate(classes):
        for f in sorted((root / "val" / c).iterdir()):
            paths.append(str(f))
            labels.append(k)
    return paths, labels


class _Bare:
    """What a user writes without camlens: torchvision's eval transform by hand on PIL."""

    def __init__(self, paths: list[str], labels: list[int]) -> None:
        self.paths, self.labels = paths, labels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        import torch

        with Image.open(self.paths[i]) as img:
            img = img.convert("RGB")
        w, h = img.size
        s = 256 / min(w, h)
        img = img.resize((max(256, int(w * s)), max(256, int(h * s))), Image.Resampling.BILINEAR)
        w, h = img.size
        left, top = int(round((w - 224) / 2)), int(round((h - 224) / 2))
        img = img.crop((left, top, left + 224, top + 224))
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8)).permute(2, 0, 1)  # (3, 224, 224)
        return x, self.labels[i]


def _bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def report_stage(data, model, out: Path, batch: int) -> dict:
    """`camlens.pipeline.report` with its defaults (the 1,000 most confident mistakes, Grad-CAM,
    the counterfactual test): evaluation, maps, gallery and report.html; their sizes."""
    import shutil

    from camlens.explain import ExplainPlan
    from camlens.pipeline import report

    shutil.rmtree(out, ignore_errors=True)  # a fresh report each run: sizes are this run's
    t0 = time.perf_counter()
    done = report(model, data, out, ExplainPlan(eval_batch_size=batch))
    return {
        "seconds": time.perf_counter() - t0,
        "images": int(done.evaluation.logits.shape[0]),
        "cards": len(done.galleries.mistakes),
        "html_mb": done.report.stat().st_size / 1e6,
        "gallery_mb": _bytes(out / "gallery") / 1e6,
    }


def run_stage(stage: str, root: Path, model_kind: str, batch: int, workers: int) -> dict:
    """One stage in this process: {seconds, images}."""
    import torch

    from camlens.data import DataConfig, load_dataset
    from camlens.evaluate import evaluate

    torch.set_num_threads(os.cpu_count() or 1)
    prep = DataConfig(resize=256, interpolation="bilinear").preprocess(224)
    model = _model(model_kind)
    os.environ["CAMLENS_WORKERS"] = str(workers)
    t0 = time.perf_counter()
    if stage == "index":
        data = load_dataset(root, preprocess=prep, progress=False, cache=False)
        n = len(data.test)
    elif stage == "evaluate":
        data = load_dataset(root, preprocess=prep, progress=False)  # the index: cached
        t0 = time.perf_counter()
        ev = evaluate(model, data.test, batch_size=batch)
        n = int(ev.logits.shape[0])
    elif stage == "bare":
        paths, labels = _paths(root)
        t0 = time.perf_counter()
        loader = torch.utils.data.DataLoader(
            _Bare(paths, labels), batch_size=batch, num_workers=workers
        )
        n = 0
        with torch.no_grad():
            for x, _ in loader:
                model(x.float().div_(255))
                n += x.shape[0]
    else:
        data = load_dataset(root, preprocess=prep, progress=False)
        return report_stage(data, model, root / "report", batch)
    return {"seconds": time.perf_counter() - t0, "images": n}


def _child(args: argparse.Namespace) -> None:
    out = run_stage(args.stage, Path(args.root), args.model, args.batch, args.workers)
    out["rss_main_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["rss_worker_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="2000,5000", help="image counts, comma-separated")
    parser.add_argument("--root", type=Path, default=Path("/tmp/camlens-scale"))
    parser.add_argument("--model", choices=("small", "resnet18"), default="small")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--stages", default="index,evaluate,bare", help=", ".join(STAGES))
    parser.add_argument("--repeats", type=int, default=2, help="runs per stage: best time")
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # the child's one stage
    args = parser.parse_args()
    if args.stage:
        return _child(args)
    print(
        f"# {args.model} model, batch {args.batch}, {args.workers} workers, {os.cpu_count()} CPUs"
    )
    print(
        "N\tstage\tseconds\timg/s\tpeak RSS main MB\tpeak RSS worker MB"
        f"\tmain + {args.workers} workers MB\t(report: cards, report.html MB, gallery MB)"
    )
    for n in (int(x) for x in args.n.split(",")):
        root = write_folder(args.root / f"n{n}", n)
        rows = {}
        # alternated, best of --repeats: on a shared machine the load moves between runs
        for _ in range(args.repeats):
            for stage in args.stages.split(","):
                cmd = [sys.executable, __file__, "--stage", stage, "--root", str(root)]
                cmd += ["--model", args.model, "--batch", str(args.batch)]
                cmd += ["--workers", str(args.workers)]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:
                    print(f"{n}\t{stage}\tfailed: {done.stderr.strip().splitlines()[-1]}")
                    continue
                r = json.loads(done.stdout.strip().splitlines()[-1])
                best = rows.setdefault(stage, r)
                best["seconds"] = min(best["seconds"], r["seconds"])
                for k in ("rss_main_mb", "rss_worker_mb"):
                    best[k] = max(best[k], r[k])
        for stage, r in rows.items():
            # the largest worker's peak times the workers: a bound on their sum, not a sum
            total = r["rss_main_mb"] + args.workers * r["rss_worker_mb"]
            extra = ""
            if "html_mb" in r:
                extra = f"\t{r['cards']}\t{r['html_mb']:.1f}\t{r['gallery_mb']:.1f}"
            print(
                f"{r['images']}\t{stage}\t{r['seconds']:.1f}\t{r['images'] / r['seconds']:.0f}"
                f"\t{r['rss_main_mb']:.0f}\t{r['rss_worker_mb']:.0f}\t{total:.0f}{extra}",
                flush=True,
            )
        if "evaluate" in rows and "bare" in rows:
            ratio = rows["evaluate"]["seconds"] / rows["bare"]["seconds"]
            print(f"{n}\tevaluate / bare\t{ratio:.2f}x")


if __name__ == "__main__":
    main()
