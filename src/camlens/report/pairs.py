"""The report's confusion-pair section: where the model looks, on average, for each frequent pair.

Per pair three mean maps on one scale (`compute.py` defines them) with their outside-centre
shares; the page states how many images each mean is over, capped by `ReportConfig.pair_images`
so that the statistics cost the same however many mistakes a pair holds.
"""

from __future__ import annotations

import torch

from camlens.overlay import colorize
from camlens.report.compute import ReportData, centre_box
from camlens.report.markup import encode_all, esc

__all__ = ["legend", "pairs_section", "variant_key"]


def variant_key(method: str, layer: str) -> str:
    """The page's name of one (method, layer) view: the radios and the payload agree on it."""
    return f"{method}|{layer}"


def legend(data: ReportData) -> str:
    ramp = torch.linspace(0, 1, 128).expand(6, 128)[None]  # (1, 6, 128)
    strips = encode_all(
        [
            (colorize(ramp, data.config.colormap), "png"),
            (colorize(ramp * 2 - 1, signed=True), "png"),
        ],
        0,
        1,
    )
    uri = "data:image/png;base64,"
    return (
        '<div class="legend"><span>low</span>'
        f'<img alt="map colours" src="{uri}{strips[0][0]}"><span>high</span>'
        f'<span class="sep"></span><span>truth</span><img alt="contrast colours" '
        f'src="{uri}{strips[1][0]}"><span>prediction</span></div>'
    )


def pairs_section(data: ReportData) -> str:
    cfg = data.config
    if not data.pairs:
        return (
            '<section id="pairs"><h2>Confusion pairs</h2><p class="note">No pair has '
            f"{cfg.min_pair} or more misclassified images.</p></section>"
        )
    methods, layers = list(data.pairs[0].means), data.layers
    maps = torch.cat([p.means[m].flatten(0, 1) for p in data.pairs for m in methods])
    pngs = iter(encode_all([(colorize(maps, cfg.colormap), "png")], 0, cfg.workers)[0])
    uri = "data:image/png;base64,"

    def pngs_of(n: int) -> list[str]:
        return [next(pngs) for _ in range(n)]

    h, w = maps.shape[-2:]
    rows, cols = centre_box(h, w, cfg.centre)
    box = (
        f"left:{100 * cols.start / w:.2f}%;top:{100 * rows.start / h:.2f}%;"
        f"width:{100 * (cols.stop - cols.start) / w:.2f}%;"
        f"height:{100 * (rows.stop - rows.start) / h:.2f}%"
    )
    shown: dict[tuple[int, int], list[int]] = {}  # the gallery's rows of each pair
    m = data.mistakes
    for i, (t, p) in enumerate(zip(m.labels.tolist(), m.preds.tolist(), strict=True)):
        shown.setdefault((t, p), []).append(i)
    blocks = []
    for pair in data.pairs:
        t, p = data.classes[pair.label_index], data.classes[pair.pred_index]
        variants = []
        # the means are over the pair's first `pair_images` mistakes, most confident first
        over = f"{pair.used} mistakes" + (f" of {pair.count}" if pair.used < pair.count else "")
        for method in methods:
            for li, layer in enumerate(layers):
                share = pair.outside[method][li].tolist()
                captions = (
                    (f"<b>{esc(p)}</b> map", over),
                    (f"<b>{esc(t)}</b> map", over),
                    (f"<b>{esc(t)}</b> map", f"{pair.correct} correct {esc(t)}"),
                )
                figs = []
                for (what, over), s, png in zip(captions, share, pngs_of(3), strict=True):
                    empty = s != s  # NaN: no image with any map mass
                    pic = (
                        '<div class="mm empty">no map</div>'
                        if empty
                        else f'<div class="mm"><img alt="mean map" src="{uri}{png}">'
                        f'<span class="box" style="{box}"></span></div>'
                    )
                    share_text = "—" if empty else f"{s:.0%}"
                    figs.append(
                        f"<figure>{pic}<figcaption>{what}<br>{over}<br>"
                        f"outside <b>{share_text}</b></figcaption></figure>"
                    )
                figs = "".join(figs)
                gap = 100 * (share[0] - share[2])  # percentage points
                verdict = (
                    ""
                    if gap != gap
                    else f"{p} map of the mistakes: {gap:+.1f} points outside vs correct {t}"
                )
                variants.append(
                    f'<div class="pv" data-variant="{esc(variant_key(method, layer))}">'
                    f'<div class="mms">{figs}</div><p class="gapline">{esc(verdict)}</p></div>'
                )
        thumbs = "".join(
            f'<img class="thumb" data-from="{i}" alt="">'
            for i in shown.get((pair.label_index, pair.pred_index), [])[:8]
        )
        blocks.append(
            f'<div class="pair" data-label="{pair.label_index}" data-pred="{pair.pred_index}">'
            f'<h3><a href="#gallery" class="pair-link" data-label="{pair.label_index}" '
            f'data-pred="{pair.pred_index}">{esc(t)} → {esc(p)}</a> '
            f"<small>{pair.count} images</small>"
            f'</h3>{"".join(variants)}<div class="thumbs">{thumbs}</div></div>'
        )
    side = f"{cfg.centre:.0%}"
    box_h, box_w = rows.stop - rows.start, cols.stop - cols.start
    uniform = 1 - box_h * box_w / (h * w)  # a uniform map's mass lies outside as its area does
    return (
        '<section id="pairs"><h2>Confusion pairs: where the model looks</h2>'
        f'<p class="note">Pairs with {cfg.min_pair} or more mistakes (at most {cfg.max_pairs}). '
        "Each row: the mean map of the predicted class and of the true class over the pair's "
        "images, beside the mean map of the true class over correctly classified images of "
        f"that class (up to {cfg.correct_per_class}). A pair's means are over its "
        f"{cfg.pair_images} most confident mistakes at most, so that their cost is bounded. "
        "Means are of per-image sum-normalised "
        "maps (each map's non-negative part divided by its total, so every image weighs the "
        "same), at image resolution; the three of a row share one colour scale. "
        f"<b>Outside</b> is the share of map mass outside the centre box (dashed, the middle "
        f"{side} of each side: {box_h}×{box_w} of {h}×{w}); a uniform map gives {uniform:.0%}. "
        "A pair far above its "
        "class's correct images hints at a background shortcut.</p>"
        f'{legend(data)}<div class="pairs">{"".join(blocks)}</div></section>'
    )
