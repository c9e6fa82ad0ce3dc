"""Drawing the gallery as numpy arrays: cards, card pages and confusion-pair pages.

`write.py` decides what goes where; this file only draws: `draw_panels` turns maps into overlay
pixels, `draw_card` and `draw_pair_page` compose them into (H, W, 3) uint8 arrays by slice
assignment (`png.py` encodes). The layout of a card (where each tile, caption and bar
goes, and the text that never changes) is computed once per gallery in `CardLayout`; text is
rendered by PIL once per distinct string and stamped, since most strings repeat (class names,
percentages). Arrays rather than PIL images: a fill, a paste and a text call each cost a Python
round trip per card, which for thousands of cards is most of the drawing time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from camlens.evaluate import ALL_BARS_UP_TO, TOP_BARS, Mistakes, as_float_images
from camlens.explain import Explanations
from camlens.outputs import GalleryConfig
from camlens.overlay import enlarge, overlay

__all__ = [
    "CardLayout",
    "Panels",
    "draw_card",
    "draw_pair_page",
    "draw_panels",
]

GREEN, RED, GREY, INK, PAPER = (46, 160, 67), (214, 39, 40), (170, 170, 170), 20, 255
GAP, CAPTION, HEADER, BARS_W, TEXT_W = 6, 16, 22, 220, 70  # card layout, pixels
VERDICT = 16  # the counterfactual verdict line under the panels, pixels


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def render_text(text: str, size: int) -> np.ndarray:
    """(h, w) uint8 grey text on white; its top-left goes where PIL's (x, y) would."""
    font = _font(size)
    _, _, right, bottom = font.getbbox(text)
    canvas = Image.new("L", (max(right, 1), max(bottom, 1)), PAPER)
    ImageDraw.Draw(canvas).text((0, 0), text, fill=INK, font=font)
    return np.asarray(canvas)


_stamp = lru_cache(maxsize=4096)(render_text)  # class names, percentages, maxima repeat


def put_text(canvas: np.ndarray, xy: tuple[int, int], text: str, size: int, cache=True) -> None:
    """Dark text onto a light `canvas` (H, W, 3) at (x, y), clipped to the canvas."""
    stamp = (_stamp if cache else render_text)(text, size)
    x, y = xy
    h = min(stamp.shape[0], canvas.shape[0] - y)
    w = min(stamp.shape[1], canvas.shape[1] - x)
    region = canvas[y : y + h, x : x + w]
    np.minimum(region, stamp[:h, :w, None], out=region)  # ink on paper: the darker wins


@dataclass(frozen=True)
class Panels:
    """The pictures of some mistakes, as uint8 arrays (M, S, S, 3), per layer."""

    images: np.ndarray
    pred: list[np.ndarray]  # per layer: overlays of the predicted-class maps
    label: list[np.ndarray]  # per layer: overlays of the true-class maps
    contrast: list[np.ndarray] | None


def draw_panels(
    expl: Explanations,
    images: Tensor,
    config: GalleryConfig,
    layers: Sequence[int] | None = None,
    with_contrast: bool = True,
) -> Panels:
    """Every overlay of `images` (and of `expl`, the same rows), computed once in batches.

    `layers`: the indices of the layers to draw, default all; `with_contrast=False` leaves out
    the contrast overlays (a pair page shows none).
    """
    size, alpha, cmap = config.size, config.alpha, config.colormap
    # enlarged once for all its overlays (overlay leaves images of the display size as they are)
    plain = enlarge(as_float_images(images), size)  # (M, S, S, 3) uint8
    x = as_float_images(plain.permute(0, 3, 1, 2))  # -> (M, 3, S, S) float, the same pixels
    pred, label, contrast = [], [], []
    for li in range(len(expl.layers)) if layers is None else layers:
        p, t, c = expl.layer_maps(li)  # (M, H, W) each
        pred.append(overlay(x, p, alpha, cmap, size).cpu().numpy())
        label.append(overlay(x, t, alpha, cmap, size).cpu().numpy())
        if c is not None and with_contrast:
            contrast.append(overlay(x, c, alpha, None, size, signed=True).cpu().numpy())
    return Panels(plain.cpu().numpy(), pred, label, contrast or None)


@dataclass(frozen=True)
class CardLayout:
    """Where everything on a card goes, and the card with its never-changing text drawn."""

    size: int
    columns: int  # 3 tiles per layer, 4 with a contrast map
    rows: int  # layers
    bars_x: int
    bars_h: int
    slots: int  # rows of probability bars: K, or TOP_BARS + 1 (the truth outside the top)
    all_bars: bool  # a bar per class, named in the template
    verdict_y: int | None  # where the counterfactual verdict line goes; None: no test
    template: np.ndarray  # (H, W, 3) uint8: paper, layer captions, class names of the bars

    @classmethod
    def of(cls, expl: Explanations, classes: Sequence[str], config: GalleryConfig) -> CardLayout:
        s = config.size
        columns = 4 if expl.contrast_low is not None else 3
        bars_x = GAP + columns * (s + GAP)
        width = bars_x + BARS_W + GAP
        height = HEADER + (s + CAPTION + GAP) * len(expl.layers)
        verdict_y = height if expl.counterfactual is not None else None
        height += VERDICT if verdict_y is not None else 0
        template = np.full((height, width, 3), PAPER)
        template = template.astype(np.uint8)
        for li, (layer, (h, w)) in enumerate(zip(expl.layers, expl.resolutions, strict=True)):
            put_text(
                template,
                (GAP, HEADER + li * (s + CAPTION + GAP) + s + 2),
                f"{layer} ({h}x{w} map)",
                10,
            )
        # a bar per class up to ALL_BARS_UP_TO classes, named once here; beyond, the likeliest
        # TOP_BARS and the truth, named on each card (which classes differs from card to card)
        all_bars = len(classes) <= ALL_BARS_UP_TO
        slots = len(classes) if all_bars else TOP_BARS + 1
        bars_h = min(s, 18 * slots)
        row = bars_h / slots
        for k, name in enumerate(classes if all_bars else ()):
            put_text(template, (bars_x + 2, HEADER + int(k * row + row / 2) - 6), name[:11], 11)
        return cls(
            s, columns, len(expl.layers), bars_x, bars_h, slots, all_bars, verdict_y, template
        )


def draw_card(
    i: int, m: Mistakes, expl: Explanations, panels: Panels, classes, layout: CardLayout
) -> np.ndarray:
    """Row `i` of `m`, `expl` and `panels`: a title, a row of panels per layer, the bars."""
    s, card = layout.size, layout.template.copy()
    label, pred = int(m.labels[i]), int(m.preds[i])
    title = (
        f"#{int(m.indices[i])}  true {classes[label]}  ->  predicted {classes[pred]} "
        f"({float(m.confidence[i]):.0%}, margin {float(m.margins[i]):.2f})"
    )
    put_text(card, (GAP, 4), title, 12, cache=False)  # unique to the card: not worth a cache
    for li in range(layout.rows):
        y = HEADER + li * (s + CAPTION + GAP)
        tiles = [
            (panels.images[i], None),
            (panels.pred[li][i], f"pred {classes[pred]}  max {float(expl.pred_max[li, i]):.2g}"),
            (panels.label[li][i], f"true {classes[label]}  max {float(expl.label_max[li, i]):.2g}"),
        ]
        if panels.contrast is not None:
            tiles.append((panels.contrast[li][i], f"{classes[pred]} - {classes[label]}"))
        for col, (pixels, text) in enumerate(tiles):
            x = GAP + col * (s + GAP)
            card[y : y + s, x : x + s] = pixels
            if text is not None:  # the first column's caption is in the template
                put_text(card, (x, y + s + 2), text, 10)
    row, x0 = layout.bars_h / layout.slots, layout.bars_x
    # (1, K) -> the classes this card shows: O(K) per card, never O(M)
    one = m.select(slice(i, i + 1))
    shown = one.bar_classes()[0]
    probs = one.probs[0, shown].tolist()
    for slot, (k, p) in enumerate(zip(shown, probs, strict=True)):
        y = HEADER + int(slot * row)
        middle = HEADER + int(slot * row + row / 2) - 6
        if not layout.all_bars:
            put_text(card, (x0 + 2, middle), classes[k][:11], 11)
        bar = int((BARS_W - TEXT_W - 40) * p)
        colour = GREEN if k == label else RED if k == pred else GREY
        right = x0 + TEXT_W + max(bar, 1) + 1
        card[y + 2 : HEADER + int(slot * row + row) - 1, x0 + TEXT_W : right] = colour
        put_text(card, (x0 + TEXT_W + bar + 3, middle), f"{p:.0%}", 11)
    if layout.verdict_y is not None and expl.counterfactual is not None:
        verdict = expl.select(slice(i, i + 1)).counterfactual.verdicts(list(classes))[0]
        put_text(card, (GAP, layout.verdict_y), verdict, 10, cache=False)
    return card


def draw_pair_page(
    rows: Sequence[int], m: Mistakes, panels: Panels, title: str, config: GalleryConfig
) -> np.ndarray:
    """Images of one confusion pair: image | predicted-class map | true-class map.

    `rows` index `m`; `panels` hold the same images in the same order, one layer.
    """
    s, per_row = config.size, 3
    tile_w = 3 * s + 2 * GAP
    cols, lines = min(per_row, len(rows)), -(-len(rows) // per_row)
    page = np.full((26 + lines * (s + 20), GAP + cols * (tile_w + 3 * GAP), 3), PAPER, np.uint8)
    put_text(page, (GAP, 5), title, 13, cache=False)
    for n, i in enumerate(rows):
        x = GAP + (n % per_row) * (tile_w + 3 * GAP)
        y = 26 + (n // per_row) * (s + 20)
        for k, pixels in enumerate((panels.images[n], panels.pred[0][n], panels.label[0][n])):
            page[y : y + s, x + k * (s + GAP) : x + k * (s + GAP) + s] = pixels
        put_text(page, (x, y + s + 3), f"#{int(m.indices[i])}  {float(m.confidence[i]):.0%}", 10)
    return page
