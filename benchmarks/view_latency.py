"""How long `camlens view` takes to show a new map of one image: the viewer's own call and the
whole HTTP request (map, PNG, JSON), per method, for the shipped ResNet18 at 32 px and a 224-px
ResNet-50.

    python benchmarks/view_latency.py [--images 12] [--threads N] [--methods gradcam,...]
    .venv-arch/bin/python benchmarks/view_latency.py --resnet50   # torchvision: .ci/run's venv

Each figure is a map not in the cache (a new image each time, so nothing is reused), after
each method has made WARM maps (a process's first maps of a method are slow): the
fastest and the median over `--images` images, in milliseconds (the fastest is the least
disturbed by other work on a shared machine; the load average is printed). "call" is
`Viewer.cam` (one engine built by explain.engine_for, one forward and one backward, under the
model's lock); "http" is GET /api/map on a live server on 127.0.0.1 (call + PNG + JSON + the
socket), after GET /api/image of the same image, as the page asks. The ResNet-50 is
torchvision's with random weights (`weights=None`: the time does not depend on them), on random
224-px images: it needs torchvision (the .venv-arch of .ci/run). The issue's targets: under
150 ms (ResNet18, 32 px) and under 1 s (ResNet-50, 224 px). Nothing is asserted: the figures
depend on the machine, which is printed (lscpu's model name).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import urllib.parse
import urllib.request

import torch

from camlens import ModelConfig, open_model
from camlens.data import Dataset, Split
from camlens.view import open_viewer
from camlens.view.server import serve
from helpers import cpu_name

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
WARM = 4  # images each method explains before the timing


def resnet50_data(n: int) -> tuple[torch.nn.Module, Dataset]:
    """torchvision's ResNet-50 (random weights) and n random 224-px images of 1,000 classes."""
    import torchvision

    model = torchvision.models.resnet50(weights=None).eval()
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 224, 224), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 1000, (n,), generator=g)
    split = Split(images, labels)
    classes = tuple(f"class {i}" for i in range(1000))
    return model, Dataset(split, split, classes, "random 224-px images", "")


def measure(viewer, url: str, method: str, layer: str, keys: list[str]) -> dict[str, float]:
    """Fastest and median ms of a new map: the call (first half of `keys`), HTTP (second)."""
    half = len(keys) // 2
    calls, https = [], []
    for key in keys[:half]:
        img = viewer.image(key)
        viewer.logits_of(img)  # the page asks for the image (and its logits) before its map
        start = time.perf_counter()
        viewer.cam(img, method, layer, "pred")
        calls.append((time.perf_counter() - start) * 1000)
    for key in keys[half:]:
        with OPENER.open(url + f"api/image/{key}", timeout=600) as r:  # as the page does first
            r.read()
        query = "api/map?" + urllib.parse.urlencode(
            {"image": key, "method": method, "layer": layer, "target": "pred"}
        )
        start = time.perf_counter()
        with OPENER.open(url + query, timeout=600) as r:
            body = json.load(r)
        https.append((time.perf_counter() - start) * 1000)
        assert not body["cached"], "a cached map was timed"
    return {
        "call": min(calls),
        "call_median": statistics.median(calls),
        "http": min(https),
        "http_median": statistics.median(https),
    }


def run(name: str, viewer, methods: list[str], layer: str, images: int, target: str) -> None:
    running = serve(viewer)
    try:
        keys = [f"t{i}" for i in range(images)]
        # warm-up: a process's first maps are slow (1-2 s here: memory and kernels are set up
        # in the first calls, of each method), which is not what a user waits for after that
        for method in methods:
            for key in keys[:WARM]:
                viewer.cam(viewer.image(key), method, layer, "pred")
        each = (images - WARM) // 2
        print(f"\n{name}, layer {layer}: ms per new map (fastest / median of {each})")
        print(f"{'method':<16}{'call':>16}{'http':>16}   target {target}")
        for method in methods:
            fresh = keys[WARM:]  # the warm-up images' maps are cached
            m = measure(viewer, running.url, method, layer, fresh)
            print(
                f"{method:<16}{m['call']:>9.1f} / {m['call_median']:<6.1f}"
                f"{m['http']:>9.1f} / {m['http_median']:<6.1f}"
            )
            viewer.maps = type(viewer.maps)(viewer.maps.size)
    finally:
        running.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=12, help="images per method (default 12)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--methods", default="gradcam,gradcam++,layercam,xgradcam,eigencam")
    parser.add_argument("--resnet50", action="store_true", help="also the 224-px ResNet-50")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("load average (1, 5, 15 min): " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))
    methods = args.methods.split(",")
    opened = open_model(ModelConfig("shipped"), "sample", "cpu", False)
    viewer = open_viewer(opened.model, opened.data, methods=methods)
    run("shipped ResNet18, 32 px", viewer, methods, "layer4", args.images + WARM, "< 150 ms")
    if args.resnet50:
        model, data = resnet50_data(args.images + WARM)
        viewer = open_viewer(model, data, methods=methods, layers=["layer4"])
        run("torchvision ResNet-50, 224 px", viewer, methods, "layer4", args.images + WARM, "< 1 s")


if __name__ == "__main__":
    main()
