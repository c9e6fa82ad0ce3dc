"""The report's gallery: a card per mistake shown, written a chunk of cards at a time.

`gallery_parts(data, payload)` yields the section's HTML in pieces, so that the page is written
to disk as it is made: a chunk's overlays are made and encoded together (PIL frees the GIL),
its cards written, and only the encoded strings of the other (method, layer) views stay, for
the JSON block at the end of the page. Originals are embedded at native size as PNG up to
`ReportConfig.thumbnail` px (32 px CIFAR images, shown enlarged with sharp pixels), above that
as JPEG thumbnails. Every per-card number is read from Python lists made once per chunk.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from camlens.evaluate import as_float_images
from camlens.metrics.counterfactual import confusion_summary
from camlens.overlay import overlay
from camlens.report.compute import ReportData
from camlens.report.markup import MIME, encode_all, esc
from camlens.report.pairs import variant_key
from camlens.report.summary import shown_note

__all__ = ["CHUNK", "KINDS", "gallery_parts", "methods_of", "probs_html", "toolbar"]

KINDS = ("pred", "label", "contrast")  # the maps of a gallery item, in its data-k order
CHUNK = 256  # gallery images whose overlays are made and encoded together


def methods_of(data: ReportData) -> list[str]:
    """The methods computed: from the gallery, or from the pairs when no mistake is shown."""
    return list(data.explanations) or (list(data.pairs[0].means) if data.pairs else [])


def probs_html(probs: list[float], shown: list[int], label: int, pred: int, classes) -> str:
    """The bars of one card: `shown` classes (`Mistakes.bar_classes`) with their `probs`."""
    rows = []
    for k, p in zip(shown, probs, strict=True):
        cls = " is-label" if k == label else " is-pred" if k == pred else ""
        rows.append(
            f'<div class="pr{cls}"><span class="n">{esc(classes[k])}</span><span class="bar">'
            f'<i style="width:{100 * p:.1f}%"></i></span>'
            f'<span class="v">{p:.0%}</span></div>'
        )
    # two columns read top to bottom, as a list is read
    return f'<div class="probs" style="--rows:{-(-len(rows) // 2)}">{"".join(rows)}</div>'


def gallery_parts(data: ReportData, payload: dict) -> Iterator[str]:
    """The gallery section in pieces; fills `payload` (variants, default) for the JSON block."""
    cfg, m, classes = data.config, data.mistakes, data.classes
    keys = [
        (method, layer, li, expl)
        for method, expl in data.explanations.items()
        for li, layer in enumerate(expl.layers)
    ]
    if not len(m) or not keys:
        yield '<section id="gallery"><h2>Misclassified</h2><p>None.</p></section>'
        return
    # the first method at its deepest layer: the usual Grad-CAM view, in the <img> tags
    default = next(k for k in reversed(keys) if k[0] == keys[0][0])
    default_key = variant_key(default[0], default[1])
    variants = {
        variant_key(method, layer): {
            "label": f"{method} · {layer} · {'×'.join(map(str, expl.resolutions[li]))} map",
            "maps": [],
        }
        for method, layer, li, expl in keys
    }
    cf = next(iter(data.explanations.values())).counterfactual
    note = shown_note(data)
    yield (
        f'<section id="gallery"><h2>Misclassified images {esc(note)}</h2>'
        '<p class="note">Each: the image, the map of the predicted class and of the true class '
        "(one colour scale per image, so a weak true-class map looks weak), and the contrast "
        "map (why the prediction rather than the truth: red for the prediction, blue for the "
        "truth; linear methods only). Bars: class probabilities (with many classes the five "
        "likeliest and the truth), true class green, prediction red. Margin: logit of the "
        "prediction minus logit of the truth. Maps are computed at the layer's native "
        "resolution (stated on each card) and upsampled.</p>"
        f'{_cf_pairs(cf, classes)}<div id="grid" class="grid">'
    )
    verdicts = cf.verdicts(list(classes)) if cf is not None else []
    cf_columns = None
    if cf is not None:  # the headline fraction's columns, each read once
        j = cf.fractions.index(cf.headline)
        cf_columns = [
            t[:, j].tolist() for t in (cf.drop_map, cf.to_true_map, cf.left_map, cf.beat_random)
        ]
    bars = m.bar_classes()
    page = (classes, f"data:{MIME[cfg.image_format]};base64,", variants[default_key]["label"])
    for start in range(0, len(m), CHUNK):
        rows = slice(start, start + CHUNK)
        originals, per_key = _encode_chunk(data, keys, rows)
        for key, maps in per_key.items():
            if key != default_key:  # the default view's maps go into the <img> tags only
                variants[key]["maps"] += maps
        start_maps = per_key[default_key]
        chunk = m.select(rows)
        # each card's bar classes' probabilities in one gather: (M, K) -> (M, up to 6)
        shown_rows = bars[rows]
        width = max(len(b) for b in shown_rows)
        padded = torch.tensor([b + b[-1:] * (width - len(b)) for b in shown_rows])
        bar_probs = chunk.probs.gather(1, padded).tolist()
        columns = (chunk.indices, chunk.labels, chunk.preds, chunk.confidence, chunk.margins)
        items = []
        for n, (index, t, p, conf, margin) in enumerate(
            zip(*(c.tolist() for c in columns), strict=True)
        ):
            i = start + n
            shown = bars[i]
            probs = bar_probs[n][: len(shown)]
            cf_facts = None
            if cf_columns is not None:
                drop, to_true, left, beat = (c[i] for c in cf_columns)
                outcome = "true" if to_true else "left" if left else "kept"
                cf_facts = (drop, f"{outcome} {'beat' if beat else 'nobeat'}", verdicts[i])
            row, pictures = (index, t, p, conf, margin), (originals[n], start_maps[n])
            items.append(
                _card(i, row, pictures, cf_facts, page)
                + f"{probs_html(probs, shown, t, p, classes)}</article>"
            )
        yield "".join(items)
    variants[default_key]["maps"] = None  # the page's <img> tags hold these
    payload.update(variants=variants, default=default_key)
    yield "</div></section>"


def _encode_chunk(data: ReportData, keys: list, rows: slice) -> tuple[list[str], dict]:
    """The chunk's originals and, per view, each card's maps: base64, made in one pool."""
    cfg, m = data.config, data.mistakes
    images = m.images[rows]
    x = as_float_images(images)
    big = max(images.shape[-2:]) > cfg.thumbnail
    # (M, 3, H, W) -> (M, H, W, 3); a photo as a small JPEG, a tiny image as lossless PNG
    batches = [(images.permute(0, 2, 3, 1), "jpeg" if big else "png")]
    sizes: list[int | None] = [cfg.thumbnail if big else None]
    for _, _, li, expl in keys:
        pred, label, contrast = expl.select(rows).layer_maps(li)  # (M, H, W) each
        for maps in (pred, label):
            batches.append((overlay(x, maps, cfg.alpha, cfg.colormap, cfg.size), cfg.image_format))
        if contrast is not None:
            batches.append(
                (overlay(x, contrast, cfg.alpha, None, cfg.size, True), cfg.image_format)
            )
        sizes += [None] * (len(batches) - len(sizes))
    encoded = iter(encode_all(batches, cfg.quality, cfg.workers, sizes))
    originals = [f"data:{MIME[batches[0][1]]};base64,{s}" for s in next(encoded)]
    per_key = {}
    for method, layer, _, expl in keys:
        kinds = 3 if expl.contrast_low is not None else 2
        per_kind = [next(encoded) for _ in range(kinds)]
        per_key[variant_key(method, layer)] = [list(z) for z in zip(*per_kind, strict=True)]
    return originals, per_key


def _card(i: int, row: tuple, pictures: tuple, cf_facts: tuple | None, page: tuple) -> str:
    """Card `i`'s HTML up to its probability bars, from plain Python values: `row` (index,
    label, pred, confidence, margin), `pictures` (original's data URI, base64 maps), `page`
    (classes, the maps' data URI prefix, the default view's label)."""
    index, t, p, conf, margin = row
    original, maps = pictures
    classes, prefix, label = page
    ln, pn = esc(classes[t]), esc(classes[p])
    pixelated = "" if original.startswith("data:image/jpeg") else " px"
    tiles = [
        f'<figure><img class="orig{pixelated}" src="{original}" alt="test image {index}">'
        f"<figcaption>#{index}</figcaption></figure>"
    ]
    captions = (f"pred <b>{pn}</b>", f"true <b>{ln}</b>", f"{pn} − {ln}")
    for k, caption in enumerate(captions):
        src = f' src="{prefix}{maps[k]}"' if k < len(maps) else ""
        hidden = "" if src else " hidden"
        tiles.append(
            f'<figure class="{KINDS[k]}"{hidden}><img class="map" data-k="{k}"{src} '
            f'alt="{KINDS[k]} map"><figcaption>{caption}</figcaption></figure>'
        )
    cf_data = cf_line = ""
    if cf_facts is not None:
        drop, kinds, verdict = cf_facts
        cf_data = f' data-cfdrop="{drop:.5f}" data-cf="{kinds}"'
        cf_line = f'<br><span class="cf">{esc(verdict)}</span>'
    return (
        f'<article class="item" id="item-{i}" data-i="{i}" data-index="{index}" '
        f'data-label="{t}" data-pred="{p}" data-lname="{ln}" data-pname="{pn}" '
        f'data-conf="{conf:.5f}" data-margin="{margin:.5f}"{cf_data}>'
        f'<div class="tiles">{"".join(tiles)}</div>'
        f'<p class="facts"><b class="l">{ln}</b> → <b class="p">{pn}</b> · '
        f"confidence {conf:.0%} · margin {margin:.2f}<br>"
        f'<span class="res">{esc(label)}</span>{cf_line}</p>'
    )


def _cf_pairs(cf, classes: tuple[str, ...]) -> str:
    """The counterfactual test summed per confusion pair of the mistakes shown."""
    if cf is None:
        return ""
    lines = "".join(f"<li>{esc(line)}</li>" for line in confusion_summary(cf, list(classes)))
    j = cf.fractions.index(cf.headline)
    by_map, by_random = int(cf.to_true_map[:, j].sum()), int(cf.to_true_random[:, j].sum())
    return (
        '<div id="cf-pairs"><h3>Counterfactual test per confusion pair</h3>'
        f'<p class="note">Removing the top {cf.headline:.0%} of each mistake\'s {cf.region} map '
        "(ROAD's noisy linear imputation) and as much of a smooth random map: how many become "
        f"their true class (mistakes shown, {esc(cf.region)} region).</p>"
        f'<p id="cf-total">All {len(cf.preds)} mistakes shown: the map turns {by_map} into their '
        f"true class; random regions turn {by_random}.</p><ul>{lines}</ul></div>"
    )


def toolbar(data: ReportData) -> str:
    methods = methods_of(data)
    if not methods or not data.layers:
        return ""
    default_layer = data.layers[-1]
    expl = data.explanations.get(methods[0])
    sizes = dict(zip(expl.layers, expl.resolutions, strict=True)) if expl else {}
    radios = "".join(
        f'<label><input type="radio" name="method" value="{esc(mt)}"'
        f"{' checked' if i == 0 else ''}> {esc(mt)}</label>"
        for i, mt in enumerate(methods)
    )
    layer_radios = "".join(
        f'<label><input type="radio" name="layer" value="{esc(layer)}"'
        f"{' checked' if layer == default_layer else ''}> {esc(layer)} "
        f'<span class="muted">{"×".join(map(str, sizes.get(layer, ())))}</span></label>'
        for layer in data.layers
    )
    return (
        '<div class="toolbar" id="toolbar">'
        f'<div class="group"><span class="lbl">method</span>{radios}</div>'
        f'<div class="group"><span class="lbl">layer</span>{layer_radios}</div>'
        '<div class="group"><label><span class="lbl">sort</span> <select id="sort">'
        '<option value="conf">confidence</option><option value="margin">margin</option>'
        '<option value="index">index</option>'
        + (
            '<option value="cfdrop">counterfactual margin drop</option></select></label></div>'
            '<div class="group"><label><span class="lbl">counterfactual</span> <select id="cf">'
            '<option value="">all</option><option value="true">became the true class</option>'
            '<option value="left">left the prediction</option>'
            '<option value="kept">kept the prediction</option>'
            '<option value="beat">beat random</option>'
            '<option value="nobeat">did not beat random</option></select></label></div>'
            if expl is not None and expl.counterfactual is not None
            else "</select></label></div>"
        )
        + '<div class="group"><input id="search" type="search" placeholder="class name…" '
        'aria-label="filter by class name"><button id="show-all" type="button">show all'
        '</button></div><div class="group status" id="status"></div></div>'
    )
