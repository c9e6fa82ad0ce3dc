"""Make the documentation's pictures from the shipped model, into docs/images/.

    python tools/make_docs_images.py [--out docs/images] [--work DIR]

- card.png: the first card of `camlens demo`'s Grad-CAM gallery (its most confident mistake);
- report.png: a screenshot of the demo's report.html, taken by headless Chromium (Debian's
  `chromium`; without it report.png is left as it is and the script says so);
- compare.png, sanity.png: `camlens.compare` of the shipped model on the bundled sample,
  Grad-CAM and LayerCAM at layer4, 8 mistakes and 8 correct images, 4 images in the sanity
  cascade (a small run, so the script ends in minutes on 2 CPU cores).
Pictures larger than 300 KB are reduced to 256 colours (the screenshot) or scaled down.
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import tempfile
from pathlib import Path

from PIL import Image

from camlens.compare import CompareConfig, compare
from camlens.data import load_dataset
from camlens.explain import ExplainPlan
from camlens.model import load_checkpoint
from camlens.pipeline import demo

LIMIT_BYTES = 300_000


def small_png(source: Path, target: Path, palette: bool = False) -> int:
    """Copy `source` to `target` as PNG, under LIMIT_BYTES where a palette or scaling gets it."""
    image = Image.open(source).convert("RGB")
    while True:
        picture = image.quantize(256, dither=Image.Dither.NONE) if palette else image
        buf = io.BytesIO()
        picture.save(buf, format="PNG", optimize=True)
        if buf.tell() <= LIMIT_BYTES or image.width < 400:
            break
        image = image.resize((image.width * 4 // 5, image.height * 4 // 5), Image.LANCZOS)
    target.write_bytes(buf.getvalue())
    return buf.tell()


def screenshot(html: Path, png: Path) -> bool:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return False
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1280,1100",
            f"--screenshot={png}",
            html.resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return png.is_file()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--work", type=Path, default=None, help="keep the runs here")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="docs-images-"))
    args.out.mkdir(parents=True, exist_ok=True)

    outcome = demo(work / "demo")
    card = sorted(outcome.galleries.folders["gradcam"].glob("cards/*.png"))[0]
    print("card.png", small_png(card, args.out / "card.png"), "bytes from", card.name)
    shot = work / "report-screenshot.png"
    if screenshot(outcome.report, shot):
        print("report.png", small_png(shot, args.out / "report.png", palette=True), "bytes")
    else:
        print("report.png left as it is: no chromium (apt-get install chromium)")

    model, _ = load_checkpoint("shipped", "cpu")
    compared = compare(
        model,
        load_dataset("sample", progress=False),
        work / "compare",
        ExplainPlan(methods=("gradcam", "layercam"), layers=("layer4",), compare_limit=8),
        CompareConfig(sanity_images=4),
    )
    for name in ("compare.png", "sanity.png"):
        print(name, small_png(compared.files[name], args.out / name), "bytes")


if __name__ == "__main__":
    main()
