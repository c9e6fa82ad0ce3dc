"""PIL drawing of the gallery: cards, grid pages and confusion-pair pages from uint8 tensors.

`write.py` decides what goes where; this file only draws: `draw_panels` turns maps into
overlay pixels once, the other `draw_*` compose them into pictures, `png_bytes` encodes.
PIL rather than matplotlib: ~0.1 s per matplotlib figure is minutes for hundreds of cards.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from camlens.evaluate import Mistakes, as_float_images
from camlens.explain import Explanations
from camlens.overlay import enlarge, overlay

__all__ = [
    "GalleryConfig",
    "Panels",
    "draw_card",
    "draw_pair_page",
    "draw_panels",
    "png_bytes",
    "stack_cards",
]

GREEN, RED, GREY, INK, PAPER = (
    (46, 160, 67),
    (214, 39, 40),
    (170, 170, 170),
    (20, 20, 20),
    (255,) * 3,
)


@dataclass(frozen=True)
class GalleryConfig:
    """How the gallery is drawn."""

    size: int = 128  # pixels per panel; 32 px images are enlarged with sharp pixels
    per_page: int = 10  # cards per grid page
    colormap: str = "jet"  # the seed's colour map; contrast maps always use a diverging one
    alpha: float = 0.5  # weight of the heat map over the image


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _tile(pixels: Tensor) -> Image.Image:
    return Image.fromarray(pixels.numpy())


def _bars(
    probs: Tensor, label: int, pred: int, classes: Sequence[str], w: int, h: int
) -> Image.Image:
    """Horizontal probability bars: true class green, prediction red, the rest grey."""
    img = Image.new("RGB", (w, h), PAPER)
    draw, font = ImageDraw.Draw(img), _font(11)
    row = h / len(classes)
    text_w = 70
    for k, (name, p) in enumerate(zip(classes, probs.tolist(), strict=True)):
        y = int(k * row)
        colour = GREEN if k == label else RED if k == pred else GREY
        draw.text((2, y + row / 2), name[:11], fill=INK, font=font, anchor="lm")
        bar = int((w - text_w - 40) * p)
        draw.rectangle([text_w, y + 2, text_w + max(bar, 1), int(y + row) - 2], fill=colour)
        draw.text((text_w + bar + 3, y + row / 2), f"{p:.0%}", fill=INK, font=font, anchor="lm")
    return img


@dataclass(frozen=True)
class Panels:
    """Every picture of the selected mistakes, as uint8 tensors (M, S, S, 3), per layer."""

    images: Tensor
    pred: list[Tensor]  # per layer: overlays of the predicted-class maps
    label: list[Tensor]  # per layer: overlays of the true-class maps
    contrast: list[Tensor] | None


def draw_panels(expl: Explanations, images: Tensor, config: GalleryConfig) -> Panels:
    """Every overlay of every card, computed once in batches: cards and pair pages share them."""
    x = as_float_images(images)
    size, alpha, cmap = config.size, config.alpha, config.colormap
    plain = enlarge(x, size)
    pred = [overlay(x, m, alpha, cmap, size) for m in expl.pred_cams]
    label = [overlay(x, m, alpha, cmap, size) for m in expl.label_cams]
    contrast = None
    if expl.contrast_cams is not None:
        contrast = [overlay(x, m, alpha, None, size, signed=True) for m in expl.contrast_cams]
    return Panels(plain, pred, label, contrast)


def draw_card(
    i: int, m: Mistakes, expl: Explanations, panels: Panels, classes, config: GalleryConfig
) -> Image.Image:
    """Mistake `i`: a title, one row of panels per layer, the probability bars."""
    s, gap, caption = config.size, 6, 16
    label, pred = int(m.labels[i]), int(m.preds[i])
    columns = 4 if panels.contrast is not None else 3
    bars_w = 220
    width = gap + columns * (s + gap) + bars_w + gap
    header = 22
    row_h = s + caption + gap
    card = Image.new("RGB", (width, header + row_h * len(expl.layers)), PAPER)
    draw, font = ImageDraw.Draw(card), _font(12)
    title = (
        f"#{int(m.indices[i])}  true {classes[label]}  ->  predicted {classes[pred]} "
        f"({float(m.confidence[i]):.0%}, margin {float(m.margins[i]):.2f})"
    )
    draw.text((gap, 4), title, fill=INK, font=font)
    for layer_idx, (layer, (h, w)) in enumerate(zip(expl.layers, expl.resolutions, strict=True)):
        y = header + layer_idx * row_h
        tiles = [
            (panels.images[i], f"{layer} ({h}x{w} map)"),
            (
                panels.pred[layer_idx][i],
                f"pred {classes[pred]}  max {float(expl.pred_max[layer_idx, i]):.2g}",
            ),
            (
                panels.label[layer_idx][i],
                f"true {classes[label]}  max {float(expl.label_max[layer_idx, i]):.2g}",
            ),
        ]
        if panels.contrast is not None:
            tiles.append((panels.contrast[layer_idx][i], f"{classes[pred]} - {classes[label]}"))
        for col, (pixels, text) in enumerate(tiles):
            x = gap + col * (s + gap)
            card.paste(_tile(pixels), (x, y))
            draw.text((x, y + s + 2), text, fill=INK, font=_font(10))
    bars = _bars(m.probs[i], label, pred, classes, bars_w, min(s, 18 * len(classes)))
    card.paste(bars, (gap + columns * (s + gap), header))
    return card


def png_bytes(img: Image.Image) -> bytes:
    """The picture as PNG bytes, compressed for speed rather than size."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # 3x faster to write, 15% larger
    return buf.getvalue()


def stack_cards(cards: list[Image.Image], gap: int = 8) -> Image.Image:
    """A grid page: cards one under the other, a rule between them."""
    width = max(c.width for c in cards)
    page = Image.new("RGB", (width, sum(c.height + gap for c in cards)), PAPER)
    y = 0
    for c in cards:
        page.paste(c, (0, y))
        y += c.height + gap
        ImageDraw.Draw(page).line([(0, y - gap // 2), (width, y - gap // 2)], fill=GREY)
    return page


def draw_pair_page(
    rows: list[int], m: Mistakes, panels: Panels, title: str, config: GalleryConfig
) -> Image.Image:
    """Every image of one confusion pair: image | predicted-class map | true-class map."""
    s, gap, per_row = config.size, 6, 3
    tile_w = 3 * s + 2 * gap
    cols = min(per_row, len(rows))
    lines = -(-len(rows) // per_row)
    page = Image.new("RGB", (gap + cols * (tile_w + 3 * gap), 26 + lines * (s + 20)), PAPER)
    draw = ImageDraw.Draw(page)
    draw.text((gap, 5), title, fill=INK, font=_font(13))
    for n, i in enumerate(rows):
        x = gap + (n % per_row) * (tile_w + 3 * gap)
        y = 26 + (n // per_row) * (s + 20)
        for k, pixels in enumerate((panels.images[i], panels.pred[-1][i], panels.label[-1][i])):
            page.paste(_tile(pixels), (x + k * (s + gap), y))
        caption = f"#{int(m.indices[i])}  {float(m.confidence[i]):.0%}"
        draw.text((x, y + s + 3), caption, fill=INK, font=_font(10))
    return page
