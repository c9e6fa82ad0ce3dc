"""`ModelDiff` -> diff.html (one self-contained page in the report's style) and diff.json."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from camlens.atomic import atomic_write_files
from camlens.diff.compute import GROUPS, TARGETS, ModelDiff
from camlens.explain import ExplainError
from camlens.overlay import enlarge, overlay
from camlens.plots import figure_png
from camlens.report.markup import b64, encode_image, esc

__all__ = ["FILES", "agreement_figure", "diff_json", "render_html", "write_diff"]

FILES = ("diff.html", "diff.json")
TILE = 96  # px: cards show 32 px images enlarged with sharp pixels, maps upsampled


def _png(pixels: np.ndarray) -> str:
    return "data:image/png;base64," + encode_image(pixels, "png")


def _group_titles(d: ModelDiff) -> dict[str, str]:
    a, b = d.names
    return {"shared": "both wrong", "only_a": f"only {a} wrong", "only_b": f"only {b} wrong"}


def _summary_stats(d: ModelDiff) -> dict:
    """The numbers of the page, JSON-ready: also what diff.json holds."""
    stats: dict = {
        "names": list(d.names),
        "classes": list(d.classes),
        "method": d.method,
        "top_fraction": d.top,
        "accuracy": [ev.accuracy for ev in d.evaluations],
        "per_class_accuracy": [ev.per_class for ev in d.evaluations],
        "images": int(d.evaluations[0].logits.shape[0]),
        "mistakes": {g: int(d.groups[g].numel()) for g in GROUPS},
        "mistakes_per_class": {g: d.per_class[g].tolist() for g in GROUPS},
        "shared_same_wrong_class": int(d.same_wrong_class.sum()),
        "agreement": {},
    }
    for layer in d.layers:
        for t in TARGETS:
            for metric, v in d.agreement[layer][t].items():
                v = v[~v.isnan()]  # pairs with a flat map rank nothing
                key = f"{layer} {t} {metric}"
                stats["agreement"][key] = {
                    "mean": float(v.mean()) if v.numel() else None,
                    "median": float(v.median()) if v.numel() else None,
                    "q25": float(v.quantile(0.25)) if v.numel() else None,
                    "q75": float(v.quantile(0.75)) if v.numel() else None,
                    "n": int(v.numel()),
                }
    return stats


def diff_json(d: ModelDiff) -> bytes:
    return (json.dumps(_summary_stats(d), indent=1) + "\n").encode()


def agreement_figure(d: ModelDiff) -> Figure:
    """Per layer, histograms of the shared mistakes' Spearman and top-IoU, pred and true maps."""
    fig = Figure(figsize=(4.2 * len(d.layers), 4.6))
    metrics = ("spearman", "iou")
    for li, layer in enumerate(d.layers):
        for mi, metric in enumerate(metrics):
            ax = fig.add_subplot(len(metrics), len(d.layers), mi * len(d.layers) + li + 1)
            for t, colour in zip(TARGETS, ("#d62728", "#2ea043"), strict=True):
                v = d.agreement[layer][t].get(metric)
                v = None if v is None else v[~v.isnan()]
                if v is not None and v.numel():
                    name = "predicted class" if t == "pred" else "true class"
                    ax.hist(
                        v.cpu().numpy(),
                        bins=20,
                        range=(-1 if metric == "spearman" else 0, 1),
                        alpha=0.55,
                        color=colour,
                        label=f"{name} (median {v.median():.2f})",
                    )
            title = "Spearman" if metric == "spearman" else f"IoU of the top {d.top:.0%}"
            ax.set_title(f"{layer}: {title}", fontsize=9)
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _accuracy_section(d: ModelDiff) -> str:
    a, b = d.names
    ev_a, ev_b = d.evaluations
    rows = "".join(
        f"<tr><th>{esc(c)}</th><td class=num>{pa:.1%}</td><td class=num>{pb:.1%}</td>"
        f"<td class=num>{pb - pa:+.1%}</td>"
        + "".join(f"<td class=num>{int(d.per_class[g][k])}</td>" for g in GROUPS)
        + "</tr>"
        for k, (c, pa, pb) in enumerate(zip(d.classes, ev_a.per_class, ev_b.per_class, strict=True))
    )
    titles = _group_titles(d)
    head = (
        f"<tr><th>class</th><th>{esc(a)}</th><th>{esc(b)}</th><th>{esc(b)} − "
        f"{esc(a)}</th>" + "".join(f"<th>{esc(titles[g])}</th>" for g in GROUPS) + "</tr>"
    )
    total = (
        f"<tr><th>all</th><td class=num><b>{ev_a.accuracy:.2%}</b></td><td class=num>"
        f"<b>{ev_b.accuracy:.2%}</b></td><td class=num>{ev_b.accuracy - ev_a.accuracy:+.2%}"
        "</td>"
        + "".join(f"<td class=num><b>{d.groups[g].numel()}</b></td>" for g in GROUPS)
        + "</tr>"
    )
    return (
        '<section id="accuracy"><h2>Accuracy and mistakes per class</h2>'
        '<p class="note">Per true class: each model\'s accuracy, and how many of its images '
        "both models get wrong, or only one of them.</p>"
        f'<table class="perclass">{head}{rows}{total}</table></section>'
    )


def _agreement_section(d: ModelDiff) -> str:
    shared = d.groups["shared"].numel()
    if not shared:
        return (
            '<section id="agreement"><h2>Shared mistakes</h2><p class="note">The models '
            "share no mistakes: there are no maps to compare.</p></section>"
        )
    same = int(d.same_wrong_class.sum())
    stats = _summary_stats(d)["agreement"]

    def cell(key: str) -> str:
        c = stats[key]
        if c["median"] is None:
            return "<td class=num>—</td>"
        return (
            f"<td class=num>{c['median']:.2f} <span class=muted>[{c['q25']:.2f}, "
            f"{c['q75']:.2f}]</span></td>"
        )

    rows = "".join(
        f"<tr><th>{esc(layer)}</th><th>{'predicted class' if t == 'pred' else 'true class'}"
        "</th>"
        + "".join(cell(f"{layer} {t} {m}") for m in ("spearman", "iou"))
        + f"<td class=num>{stats[f'{layer} {t} spearman']['n']}</td></tr>"
        for layer in d.layers
        for t in TARGETS
    )
    png = b64(figure_png(agreement_figure(d)))
    return (
        '<section id="agreement"><h2>Shared mistakes: the same error, the same evidence?</h2>'
        f'<p class="note">{shared} images are misclassified by both; on {same} '
        f"({same / shared:.0%}) they predict the same wrong class. Each model's {esc(d.method)} "
        "map is compared with the other's, per image: Spearman rank correlation, and the IoU of "
        f'the top {d.top:.0%} of pixels. "Predicted class" compares the maps of what each '
        'model predicted; "true class" the maps of the same class in both. A pair where '
        'either map is flat (nothing to rank) is left out: "pairs" counts the rest.</p>'
        '<table class="perclass"><tr><th>layer</th><th>maps of</th><th>Spearman, median '
        f"[IQR]</th><th>IoU top {d.top:.0%}, median [IQR]</th><th>pairs</th></tr>{rows}</table>"
        f'<img class="curves" alt="agreement histograms" src="data:image/png;base64,{png}">'
        "</section>"
    )


def _gallery_section(d: ModelDiff) -> str:
    a, b = d.names
    titles = _group_titles(d)
    parts = []
    for g in GROUPS:
        images = d.images[g]
        n = images.shape[0]
        if not n:
            parts.append(f"<h3>{esc(titles[g])}: none</h3>")
            continue
        idx = d.groups[g][:n]
        origs = enlarge(images, TILE).cpu().numpy()
        over_a = overlay(images, d.maps[g][0], size=TILE).cpu().numpy()
        over_b = overlay(images, d.maps[g][1], size=TILE).cpu().numpy()
        preds = [ev.logits.argmax(1).cpu()[idx] for ev in d.evaluations]
        labels = d.labels[idx]
        items = []
        for i in range(n):
            pa, pb, y = int(preds[0][i]), int(preds[1][i]), int(labels[i])
            items.append(
                f'<div class="item"><div class="facts">#{int(idx[i])} · true '
                f"<span class=l>{esc(d.classes[y])}</span> · {esc(a)}: "
                f"<span class={'p' if pa != y else 'l'}>{esc(d.classes[pa])}</span> · "
                f"{esc(b)}: <span class={'p' if pb != y else 'l'}>{esc(d.classes[pb])}</span>"
                '</div><div class="tiles">'
                f'<figure><img class="orig" alt="image" src="{_png(origs[i])}">'
                "<figcaption>image</figcaption></figure>"
                f'<figure><img class="map" alt="{esc(a)} map" src="{_png(over_a[i])}">'
                f"<figcaption>{esc(a)}</figcaption></figure>"
                f'<figure><img class="map" alt="{esc(b)} map" src="{_png(over_b[i])}">'
                f"<figcaption>{esc(b)}</figcaption></figure></div></div>"
            )
        shown = f"the {n} most confident of {d.groups[g].numel()}"
        parts.append(
            f'<h3>{esc(titles[g])} ({shown})</h3><div class="grid">' + "".join(items) + "</div>"
        )
    return (
        '<section id="galleries"><h2>Galleries</h2><p class="note">Each model\'s '
        f"{esc(d.method)} map of the class it predicted, at {esc(d.layers[-1])}.</p>"
        + "".join(parts)
        + "</section>"
    )


def render_html(d: ModelDiff) -> str:
    """The whole page as a string, in the report's template (same styles, no network)."""
    a, b = d.names
    ev_a, ev_b = d.evaluations
    images = int(ev_a.logits.shape[0])
    body = (
        f'<header class="top"><h1>camlens diff: {esc(a)} vs {esc(b)}</h1><p class="sub">'
        f"{images} test images · {esc(a)} <b>{ev_a.accuracy:.2%}</b> · {esc(b)} "
        f"<b>{ev_b.accuracy:.2%}</b> · {d.groups['shared'].numel()} shared mistakes, "
        f"{d.groups['only_a'].numel()} only {esc(a)}, {d.groups['only_b'].numel()} only "
        f'{esc(b)}</p><nav><a href="#accuracy">accuracy</a><a href="#agreement">shared '
        'mistakes</a><a href="#galleries">galleries</a></nav></header>'
        f"<main>{_accuracy_section(d)}{_agreement_section(d)}{_gallery_section(d)}</main>"
    )
    payload = json.dumps({"classes": list(d.classes)}).replace("</", "<\\/")
    template = (resources.files("camlens") / "assets" / "report_template.html").read_text()
    parts = {"title": esc(f"camlens diff · {a} vs {b}"), "body": body, "payload": payload}
    return re.sub(r"\{\{(\w+)\}\}", lambda mt: parts[mt.group(1)], template)


def write_diff(d: ModelDiff, out: str | Path) -> dict[str, Path]:
    """Write FILES into `out` (both or neither) and return name -> path."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExplainError(f"--out {out} is a file: name a folder")
    out.mkdir(parents=True, exist_ok=True)
    files = {name: out / name for name in FILES}
    atomic_write_files(
        {
            files["diff.html"]: render_html(d).encode("utf-8"),
            files["diff.json"]: diff_json(d),
        }
    )
    return files
