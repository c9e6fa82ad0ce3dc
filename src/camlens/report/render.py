"""`ReportData` -> one self-contained HTML file: every picture a data URI, CSS and JS inline.

The page works from disk with no network. Pictures are encoded here, at the edge, in a thread
pool (PIL releases the GIL while encoding): originals as 32 px PNG shown enlarged with sharp
pixels, overlays as small JPEG (or PNG/WebP, see `ReportConfig`). Gallery maps of every
(method, layer) are embedded once: the default one in the `<img>` tags, the others in a JSON
block from which the script swaps image sources when the method or layer changes.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from camlens.atomic import atomic_write_bytes
from camlens.evaluate import as_float_images
from camlens.metrics import BASELINE_KINDS, GRID_BASELINES
from camlens.metrics.counterfactual import confusion_summary
from camlens.overlay import colorize, overlay
from camlens.plots import figure_png, plot_curves
from camlens.report.compute import ReportData, centre_box

__all__ = ["render_html", "render_report"]

MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
TRUST_LINK = '<a href="#trust">trust</a>'
EPOCHS_LINK = '<a href="#epochs">across epochs</a>'
KINDS = ("pred", "label", "contrast")  # the maps of a gallery item, in its data-k order
CHUNK = 256  # gallery images whose overlays are made and encoded together


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _encode(job: tuple[np.ndarray, str, int]) -> str:
    pixels, fmt, quality = job
    buf = io.BytesIO()
    img = Image.fromarray(pixels)
    if fmt == "png":
        img.save(buf, format="PNG", compress_level=6)
    elif fmt == "jpeg":
        img.save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format="WEBP", quality=quality, method=4)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _encode_all(batches: list[tuple[torch.Tensor, str]], quality: int, workers: int | None):
    """Each (N, S, S, 3) uint8 batch -> N base64 strings, all batches in one thread pool."""
    jobs = [(a, fmt, quality) for t, fmt in batches for a in t.contiguous().numpy()]
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        flat = list(pool.map(_encode, jobs))
    out, start = [], 0
    for t, _ in batches:
        out.append(flat[start : start + t.shape[0]])
        start += t.shape[0]
    return out


def _variant(method: str, layer: str) -> str:
    return f"{method}|{layer}"


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, separators=(", ", ": "), default=str)
    return str(value)


def _seconds(value: object) -> str:
    if not isinstance(value, (int, float)):
        return "—"
    if value >= 60:
        return f"{value:.0f} s ({value / 60:.1f} min)"
    return f"{value:.1f} s" if value >= 10 else f"{value:.2f} s"


def _kv(rows: list[tuple[str, object]], cls: str = "kv") -> str:
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(_fmt(v))}</td></tr>" for k, v in rows)
    return f'<table class="{cls}">{body}</table>'


def _data_label(data: ReportData) -> str:
    info = data.run_info
    return str(info.get("data_label") or info.get("data_source") or info.get("data") or "test")


def _summary(data: ReportData) -> str:
    info, ev, facts, m = data.run_info, data.evaluation, data.model_info, data.mistakes
    label = _data_label(data)
    arch = facts["model"] + (f", width {facts['width']}" if "width" in facts else "")
    shown = f" (showing the {len(m)} most confident)" if len(m) < len(ev.mistakes) else ""
    epochs = info.get("epochs") or (len(data.history) if data.history else "—")
    rows = [
        ("Model", f"{arch}, {facts['parameters']:,} parameters"),
        ("Norm", info.get("norm", facts.get("norm", "—"))),
        ("Data", label),
        ("Epochs", epochs),
        (f"Test accuracy on {label}", f"{ev.accuracy:.2%}"),
        ("Test loss", f"{ev.loss:.4f}"),
        ("Test images", int(ev.logits.shape[0])),
        ("Misclassified", f"{len(ev.mistakes)}{shown}"),
        ("Training time", _seconds(info.get("train_seconds", info.get("seconds")))),
        ("Maps", ", ".join(data.explanations) or "none"),
        ("Report computed in", _seconds(data.seconds)),
    ]
    details = [(k, v) for k, v in info.items() if k != "data_label"]
    curves = ""
    if data.history:
        try:
            png = base64.b64encode(plot_curves(data.history)).decode("ascii")
            curves = (
                '<img class="curves" alt="loss and accuracy per epoch" '
                f'src="data:image/png;base64,{png}">'
            )
        except (KeyError, TypeError) as e:  # free-form history: draw what is there or say why
            curves = f'<p class="note">no curves: history lacks {esc(e)}</p>'
    return (
        '<section id="summary"><h2>Run</h2><div class="two">'
        f"<div>{_kv(rows)}</div>"
        f"<div><h3>Run details</h3>{_kv(details, 'kv details') if details else '—'}</div>"
        f"</div>{curves}</section>"
    )


def _per_class(data: ReportData) -> str:
    conf = data.evaluation.confusion
    rows = []
    for k, name in enumerate(data.classes):
        total, right = int(conf[k].sum()), int(conf[k, k])
        acc = right / total if total else 0.0
        rows.append(
            f'<tr><th>{esc(name)}</th><td class="barcell"><span class="bar">'
            f'<i style="width:{100 * acc:.1f}%"></i></span></td>'
            f'<td class="num">{acc:.1%}</td><td class="num muted">{right}/{total}</td></tr>'
        )
    return f'<div><h2>Per-class accuracy</h2><table class="perclass">{"".join(rows)}</table></div>'


def _confusion(data: ReportData) -> str:
    conf = data.evaluation.confusion.long()
    rates = conf.double() / conf.sum(1, keepdim=True).clamp_min(1)
    off = rates.clone().fill_diagonal_(0)
    top_off = float(off.max()) or 1.0
    classes = data.classes
    head = "".join(f'<th class="col"><span>{esc(c)}</span></th>' for c in classes)
    body = []
    for t, row_name in enumerate(classes):
        cells = []
        for p in range(len(classes)):
            n, rate = int(conf[t, p]), float(rates[t, p])
            if t == p:
                cls, colour, strength = "cell diag", "46,160,67", rate
            else:
                # off the diagonal, scaled to the largest confusion so that the few % show
                cls, colour, strength = "cell off", "214,39,40", rate / top_off
            title = f"true {classes[t]}, predicted {classes[p]}: {n} ({rate:.1%} of {classes[t]})"
            extra = ' tabindex="0" role="button"' if t != p and n else ""
            cls += " clickable" if extra else ""
            cls += " dark" if strength > 0.55 else " zero" if n == 0 else ""
            cells.append(
                f'<td class="{cls}" data-label="{t}" data-pred="{p}" title="{esc(title)}"{extra} '
                f'style="background:rgba({colour},{0.85 * strength:.3f})">{n}</td>'
            )
        body.append(f'<tr><th class="row">{esc(row_name)}</th>{"".join(cells)}</tr>')
    return (
        '<div><h2>Confusion matrix</h2><p class="note">Rows: true class; columns: predicted. '
        "Colour: share of the row (green on the diagonal; red off it, scaled to the largest "
        "confusion). Click an off-diagonal cell to show only that pair below; click it again or "
        '"show all" to clear.</p>'
        f'<table class="confusion"><thead><tr><th class="corner">true \\ predicted</th>{head}'
        f"</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def _legend(data: ReportData) -> str:
    ramp = torch.linspace(0, 1, 128).expand(6, 128)[None]  # (1, 6, 128)
    strips = _encode_all(
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


def _pairs(data: ReportData) -> str:
    cfg = data.config
    if not data.pairs:
        return (
            '<section id="pairs"><h2>Confusion pairs</h2><p class="note">No pair has '
            f"{cfg.min_pair} or more misclassified images.</p></section>"
        )
    methods, layers = list(data.pairs[0].means), data.layers
    maps = torch.cat([p.means[m].flatten(0, 1) for p in data.pairs for m in methods])
    pngs = iter(_encode_all([(colorize(maps, cfg.colormap), "png")], 0, cfg.workers)[0])
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
    shown = {}
    m = data.mistakes
    for i, (t, p) in enumerate(zip(m.labels.tolist(), m.preds.tolist(), strict=True)):
        shown.setdefault((t, p), []).append(i)
    blocks = []
    for pair in data.pairs:
        t, p = data.classes[pair.label_index], data.classes[pair.pred_index]
        variants = []
        for method in methods:
            for li, layer in enumerate(layers):
                share = pair.outside[method][li].tolist()
                captions = (
                    (f"<b>{esc(p)}</b> map", f"{pair.count} mistakes"),
                    (f"<b>{esc(t)}</b> map", f"{pair.count} mistakes"),
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
                    f'<div class="pv" data-variant="{esc(_variant(method, layer))}">'
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
        f"that class (up to {cfg.correct_per_class}). Means are of per-image sum-normalised "
        "maps (each map's non-negative part divided by its total, so every image weighs the "
        "same), at image resolution; the three of a row share one colour scale. "
        f"<b>Outside</b> is the share of map mass outside the centre box (dashed, the middle "
        f"{side} of each side: {box_h}×{box_w} of {h}×{w}); a uniform map gives {uniform:.0%}. "
        "A pair far above its "
        "class's correct images hints at a background shortcut.</p>"
        f'{_legend(data)}<div class="pairs">{"".join(blocks)}</div></section>'
    )


def _probs(probs: list[float], label: int, pred: int, classes: tuple[str, ...]) -> str:
    order = range(len(classes))
    if len(classes) > 12:  # many classes: the five likeliest and the truth
        order = sorted(set(np.argsort(probs)[::-1][:5].tolist()) | {label})
    rows = []
    for k in order:
        cls = " is-label" if k == label else " is-pred" if k == pred else ""
        rows.append(
            f'<div class="pr{cls}"><span class="n">{esc(classes[k])}</span><span class="bar">'
            f'<i style="width:{100 * probs[k]:.1f}%"></i></span>'
            f'<span class="v">{probs[k]:.0%}</span></div>'
        )
    # two columns read top to bottom, as a list is read
    return f'<div class="probs" style="--rows:{-(-len(rows) // 2)}">{"".join(rows)}</div>'


def _gallery(data: ReportData) -> tuple[str, dict]:
    cfg, m, classes = data.config, data.mistakes, data.classes
    payload: dict = {"classes": list(classes), "prefix": f"data:{MIME[cfg.image_format]};base64,"}
    if not len(m):
        return '<section id="gallery"><h2>Misclassified</h2><p>None.</p></section>', payload
    keys = [
        (method, layer, li, expl)
        for method, expl in data.explanations.items()
        for li, layer in enumerate(expl.layers)
    ]
    originals, per_key = [], {k[:2]: [] for k in keys}
    # chunk by chunk, so that full-size maps and overlays of thousands of mistakes never
    # sit in memory together: only their encoded strings stay
    for start in range(0, len(m), CHUNK):
        rows = slice(start, start + CHUNK)
        x = as_float_images(m.images[rows])
        batches = [(m.images[rows].permute(0, 2, 3, 1), "png")]  # (M, 3, H, W) -> (M, H, W, 3)
        for _, _, li, expl in keys:
            pred, label, contrast = expl.select(rows).layer_maps(li)  # (M, H, W) each
            for cams in (pred, label):
                batches.append((overlay(x, cams, cfg.alpha, cfg.colormap, cfg.size), ""))
            if contrast is not None:
                batches.append((overlay(x, contrast, cfg.alpha, None, cfg.size, True), ""))
        batches = [(t, fmt or cfg.image_format) for t, fmt in batches]
        encoded = iter(_encode_all(batches, cfg.quality, cfg.workers))
        originals += next(encoded)
        for method, layer, _, expl in keys:
            kinds = 3 if expl.contrast_low is not None else 2
            per_kind = [next(encoded) for _ in range(kinds)]
            per_key[method, layer] += [list(z) for z in zip(*per_kind, strict=True)]
    variants = {}
    for method, layer, li, expl in keys:
        h, w = expl.resolutions[li]
        variants[_variant(method, layer)] = {
            "label": f"{method} · {layer} · {h}×{w} map",
            "maps": per_key[method, layer],
        }
    if not keys:
        return '<section id="gallery"><h2>Misclassified</h2><p>No maps.</p></section>', payload
    # the first method at its deepest layer: the usual Grad-CAM view
    default = next(k for k in reversed(keys) if k[0] == keys[0][0])
    key = _variant(default[0], default[1])
    start_maps = variants[key]["maps"]
    variants[key] = {**variants[key], "maps": None}  # the page's <img> tags hold these
    payload.update(variants=variants, default=key)
    prefix, orig = payload["prefix"], "data:image/png;base64,"
    label = variants[key]["label"]
    items = []
    probs = m.probs.tolist()
    # the counterfactual test of the first method (the default view): a verdict per item,
    # data-cf* to sort and filter by, and its sums per confusion pair
    cf = next(iter(data.explanations.values())).counterfactual
    verdicts = cf.verdicts(list(classes)) if cf is not None else []
    j = cf.fractions.index(cf.headline) if cf is not None else 0
    for i in range(len(m)):
        t, p = int(m.labels[i]), int(m.preds[i])
        ln, pn = esc(classes[t]), esc(classes[p])
        tiles = [
            f'<figure><img class="orig" src="{orig}{originals[i]}" alt="test image '
            f'{int(m.indices[i])}"><figcaption>#{int(m.indices[i])}</figcaption></figure>'
        ]
        captions = (f"pred <b>{pn}</b>", f"true <b>{ln}</b>", f"{pn} − {ln}")
        for k, caption in enumerate(captions):
            src = f' src="{prefix}{start_maps[i][k]}"' if k < len(start_maps[i]) else ""
            hidden = "" if src else " hidden"
            tiles.append(
                f'<figure class="{KINDS[k]}"{hidden}><img class="map" data-k="{k}"{src} '
                f'alt="{KINDS[k]} map"><figcaption>{caption}</figcaption></figure>'
            )
        conf, margin = float(m.confidence[i]), float(m.margins[i])
        cf_data = cf_line = ""
        if cf is not None:
            cf_data = (
                f' data-cfdrop="{float(cf.drop_map[i, j]):.5f}" '
                f'data-cf="{_cf_outcome(cf, i, j)} {"beat" if cf.beat_random[i, j] else "nobeat"}"'
            )
            cf_line = f'<br><span class="cf">{esc(verdicts[i])}</span>'
        items.append(
            f'<article class="item" id="item-{i}" data-i="{i}" data-index="{int(m.indices[i])}" '
            f'data-label="{t}" data-pred="{p}" data-lname="{ln}" data-pname="{pn}" '
            f'data-conf="{conf:.5f}" data-margin="{margin:.5f}"{cf_data}>'
            f'<div class="tiles">{"".join(tiles)}</div>'
            f'<p class="facts"><b class="l">{ln}</b> → <b class="p">{pn}</b> · '
            f"confidence {conf:.0%} · margin {margin:.2f}<br>"
            f'<span class="res">{esc(label)}</span>{cf_line}</p>'
            f"{_probs(probs[i], t, p, classes)}</article>"
        )
    limited = len(m) < len(data.evaluation.mistakes)
    note = f"the {len(m)} most confident of {len(data.evaluation.mistakes)}" if limited else ""
    return (
        f'<section id="gallery"><h2>Misclassified images {esc(note)}</h2>'
        '<p class="note">Each: the image, the map of the predicted class and of the true class '
        "(one colour scale per image, so a weak true-class map looks weak), and the contrast "
        "map (why the prediction rather than the truth: red for the prediction, blue for the "
        "truth; linear methods only). Bars: class probabilities, true class green, prediction "
        "red. Margin: logit of the prediction minus logit of the truth. Maps are computed at "
        "the layer's native resolution (stated on each card) and upsampled.</p>"
        f"{_cf_pairs(cf, classes)}"
        f'<div id="grid" class="grid">{"".join(items)}</div></section>'
    ), payload


def _cf_outcome(cf, i: int, j: int) -> str:
    """What removing the region did to mistake `i` at fraction `j`: "true", "left" or "kept"."""
    return "true" if cf.to_true_map[i, j] else "left" if cf.left_map[i, j] else "kept"


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


def _methods(data: ReportData) -> list[str]:
    """The methods computed: from the gallery, or from the pairs when no mistake is shown."""
    return list(data.explanations) or (list(data.pairs[0].means) if data.pairs else [])


def _toolbar(data: ReportData) -> str:
    methods = _methods(data)
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


def _trust(data: ReportData) -> str:
    """The compare table (method, layer rows; metric columns; per subset), the paired verdicts
    in words, each method's sanity state with its reasons, and the sanity curves."""
    t = data.trust
    if t is None:
        return ""
    rows, better, wins = t["rows"], t["higher_is_better"], {tuple(k) for k in t["beats_baselines"]}
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    keys = list(dict.fromkeys((r["method"], r["layer"]) for r in rows))
    cell = {(r["method"], r["layer"], r["subset"], r["metric"]): r for r in rows}
    tables = []
    for subset in dict.fromkeys(r["subset"] for r in rows):
        n = next(r["n"] for r in rows if r["subset"] == subset)
        head = "".join(f"<th>{esc(m)} {'↑' if better[m] else '↓'}</th>" for m in metrics)
        body = []
        for method, layer in keys:
            # every baseline row, the random map at a layer's grid included, is a reference
            base = method in BASELINE_KINDS
            tds = []
            for m in metrics:
                r = cell[(method, layer, subset, m)]
                cls = "base" if base else ("win" if (method, layer, subset, m) in wins else "lose")
                tds.append(
                    f'<td class="{cls}">{r["mean"]:.3f} <small>[{r["ci_low"]:.3f}, '
                    f"{r['ci_high']:.3f}]</small></td>"
                )
            where = "" if layer == "-" else f" {layer}"
            name = f"baseline: {method}{where}" if base else f"{method} {layer}"
            body.append(f"<tr><th>{esc(name)}</th>{''.join(tds)}</tr>")
        tables.append(
            f'<h3>{esc(subset)} ({n} images)</h3><table class="trust"><tr><th></th>{head}</tr>'
            f"{''.join(body)}</table>"
        )
    # the paired verdicts in words; an older compare.json says only which tie the centre map
    said = t.get("headline", t.get("indistinguishable_from_centre", []))
    grid = t.get("grid") or {}  # the grid test leads: which method and layer to believe
    said = ([grid["line"]] if grid.get("line") else []) + list(said)
    headline = "".join(f"<li>{esc(line)}</li>" for line in said)
    verdicts = t.get("verdicts", {})
    states = []
    for method, s in t["sanity"].items():
        state = s["state"]
        why = "; ".join(s["reasons"]) if s["reasons"] else verdicts.get(state, "")
        cls = "state-pass" if state == "passes" else "state-fail"
        states.append(
            f'<tr><th>{esc(method)} {esc(s["layer"])}</th><td class="{cls}">{esc(state)}</td>'
            f"<td>{esc(why)}</td></tr>"
        )
    meaning = "".join(
        f"<li><b>{esc(state)}</b>: {esc(line)}</li>" for state, line in verdicts.items()
    )
    fig = Figure(figsize=(6, 3.2))
    ax = fig.add_subplot()
    for method, s in t["sanity"].items():
        ax.plot(s["spearman"], marker="o", ms=3, label=f"{method} ({s['state']})")
        steps, layer = s["steps"], s["layer"]
    ax.axhline(0.5, color="grey", ls="--", lw=0.8)
    ax.set_xticks(range(len(steps)), steps, rotation=60, fontsize=6)
    ax.set_ylabel(f"mean Spearman with original ({layer})", fontsize=7)
    ax.legend(fontsize=6)
    curve = base64.b64encode(figure_png(fig)).decode()
    paired = esc(t.get("settings", {}).get("paired", "paired bootstrap, Holm-corrected"))
    return (
        '<section id="trust"><h2>Can these maps be trusted?</h2><p class="note">Each map scored '
        "by deletion and insertion (Petsiuk 2018), Average Drop and Increase (Chattopadhay 2018), "
        "ROAD (Rong 2022) and ARCC (Domeniconi 2026), beside the baselines (a smooth random map "
        "at each layer's grid, a centred map) scored the same way on the same images. Green: "
        "better than every baseline by the paired test on the same images "
        f"({paired}); red: not told apart from some baseline, or worse.</p>"
        f'<ul class="headline">{headline}</ul>{_grid_table(grid)}{"".join(tables)}'
        "<h3>Sanity checks: cascading randomisation (Adebayo 2018), Random Logit (Sixt 2020), "
        "eMPRT (Hedström 2023)</h3>"
        f'<table class="trust"><tr><th></th><th>state</th><th>why</th></tr>{"".join(states)}'
        f'</table><ul class="note">{meaning}</ul>'
        '<p class="note">Layers re-initialised from the output back; a map that keeps its rank '
        "correlation with the original does not depend on what the model learned.</p>"
        f'<img alt="sanity curves" src="data:image/png;base64,{curve}"></section>'
    )


def _grid_table(grid: dict) -> str:
    """The grid test's table: each (method, layer) and baseline, share in its class's tile at
    the layer's grid and at the input's size, pointing; green where it beats centre and random."""
    if not grid.get("rows"):
        return ""
    decided: dict[tuple[str, str, str], list[str]] = {}
    for r in grid["paired"]:
        decided.setdefault((r["method"], r["layer"], r["metric"]), []).append(r["decision"])
    cell = {(r["method"], r["layer"], r["metric"]): r for r in grid["rows"]}
    metrics = list(dict.fromkeys(r["metric"] for r in grid["rows"]))
    body = []
    for method, layer in dict.fromkeys((r["method"], r["layer"]) for r in grid["rows"]):
        base = method in GRID_BASELINES
        tds = []
        for m in metrics:
            r, ds = cell[(method, layer, m)], decided.get((method, layer, m), [])
            cls = "base" if base else ("win" if ds and all(d == "better" for d in ds) else "lose")
            tds.append(
                f'<td class="{cls}">{r["mean"]:.3f} <small>[{r["ci_low"]:.3f}, '
                f"{r['ci_high']:.3f}]</small></td>"
            )
        name = f"baseline: {method}" + ("" if layer == "-" else f" {layer}") if base else ""
        body.append(f"<tr><th>{esc(name or f'{method} {layer}')}</th>{''.join(tds)}</tr>")
    s = grid["settings"]
    head = "".join(f"<th>{esc(m)} ↑</th>" for m in metrics)
    return (
        f"<h3>grid test ({s['n']}x{s['n']}, {s['kept']} grids; chance {s['chance']:.3f})</h3>"
        f'<p class="note">{esc(s["leakage"])}; {esc(s["paired"])}</p>'
        f'<table class="trust"><tr><th></th>{head}</tr>{"".join(body)}</table>'
    )


def _over_epochs(data: ReportData) -> str:
    """The strips of `camlens.epochs`: the final mistakes' maps at each kept epoch."""
    e = data.over_epochs
    if e is None:
        return ""
    epochs = ", ".join(str(x) for x in e["epochs"])
    return (
        '<section id="epochs"><h2>Maps across training</h2><p class="note">The final model\'s '
        f"{len(e['images'])} most confident mistakes, explained by the weights kept at epochs "
        f"{esc(epochs)} ({esc(e['method'])} at {esc(e['layer'])}): per image the map of the final "
        "prediction (red) and of the true class (green) at each epoch, on one scale, with that "
        "epoch's probability of each class. When did the model start to look there, and when "
        "did the mistake appear?</p>"
        f'<img class="curves" alt="maps across training" src="data:image/png;base64,{e["png"]}">'
        "</section>"
    )


def render_html(data: ReportData) -> str:
    """The whole page as a string."""
    gallery, payload = _gallery(data)
    if "default" not in payload and _methods(data) and data.layers:  # no gallery, pairs only
        payload["default"] = _variant(_methods(data)[0], data.layers[-1])
    label = _data_label(data)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = (
        f'<header class="top"><h1>camlens report</h1><p class="sub">{esc(label)} · test '
        f"accuracy <b>{data.evaluation.accuracy:.2%}</b> · {len(data.evaluation.mistakes)} "
        f"misclassified · generated {stamp}</p><nav>"
        '<a href="#summary">run</a><a href="#confusion">classes &amp; confusion</a>'
        '<a href="#pairs">pairs</a><a href="#gallery">gallery</a>'
        f"{TRUST_LINK if data.trust else ''}"
        f"{EPOCHS_LINK if data.over_epochs else ''}</nav></header>"
        f"{_toolbar(data)}<main>{_summary(data)}"
        f'<section id="confusion" class="two wide">{_per_class(data)}{_confusion(data)}'
        f"</section>{_pairs(data)}{_trust(data)}{_over_epochs(data)}{gallery}</main>"
    )
    # "</" would end the script element early; JSON allows the escaped form
    blob = json.dumps(payload, separators=(",", ":")).replace("</", "<\\/")
    template = (resources.files("camlens") / "assets" / "report_template.html").read_text()
    parts = {"title": esc(f"camlens report · {label}"), "body": body, "payload": blob}
    return re.sub(r"\{\{(\w+)\}\}", lambda mt: parts[mt.group(1)], template)


def render_report(data: ReportData, out: str | Path) -> Path:
    """Write `out`/report.html (atomically) and return its path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.html"
    atomic_write_bytes(path, render_html(data).encode("utf-8"))
    return path
