"""The report's first sections: the run, per-class accuracy and the confusion between classes.

Up to `CELL_NUMBERS_UP_TO` classes (30) the confusion is a clickable K x K table beside bars of
per-class accuracy. Beyond, a K x K table is a million cells at K = 1,000 (about 200 MB of
HTML), so the page shows instead a sortable per-class table and the `ReportConfig.top_pairs`
most confused pairs, each a link that filters the gallery to that pair's cards.
"""

from __future__ import annotations

from camlens.plots import CELL_NUMBERS_UP_TO, plot_curves, top_confusions
from camlens.report.compute import ReportData
from camlens.report.markup import data_uri, esc, kv_table, seconds_text

__all__ = ["classes_section", "data_label", "summary_section"]


def data_label(data: ReportData) -> str:
    info = data.run_info
    return str(info.get("data_label") or info.get("data_source") or info.get("data") or "test")


def shown_note(data: ReportData) -> str:
    """How many mistakes the page shows, of how many, and the cap that chose them."""
    shown, total = len(data.mistakes), len(data.evaluation.mistakes)
    if shown >= total:
        return ""
    cap = f"; the cap is {data.cap:,}" if data.cap is not None else ""
    return f"the {shown:,} most confident of {total:,}{cap}"


def summary_section(data: ReportData) -> str:
    info, ev, facts = data.run_info, data.evaluation, data.model_info
    label = data_label(data)
    arch = facts["model"] + (f", width {facts['width']}" if "width" in facts else "")
    note = shown_note(data)
    shown = f" (showing {note})" if note else ""
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
        ("Training time", seconds_text(info.get("train_seconds", info.get("seconds")))),
        ("Maps", ", ".join(data.explanations) or "none"),
        ("Report computed in", seconds_text(data.seconds)),
    ]
    details = [(k, v) for k, v in info.items() if k != "data_label"]
    curves = ""
    if data.history:
        try:
            curves = (
                '<img class="curves" alt="loss and accuracy per epoch" '
                f'src="{data_uri(plot_curves(data.history))}">'
            )
        except (KeyError, TypeError) as e:  # free-form history: draw what is there or say why
            curves = f'<p class="note">no curves: history lacks {esc(e)}</p>'
    return (
        '<section id="summary"><h2>Run</h2><div class="two">'
        f"<div>{kv_table(rows)}</div>"
        f"<div><h3>Run details</h3>{kv_table(details, 'kv details') if details else '—'}</div>"
        f"</div>{curves}</section>"
    )


def classes_section(data: ReportData) -> str:
    """Per-class accuracy and the confusion: as a K x K table, or its largest pairs."""
    if len(data.classes) > CELL_NUMBERS_UP_TO:
        return (
            '<section id="confusion" class="two">'
            f"{_class_table(data)}{_top_pairs_table(data)}</section>"
        )
    return (
        f'<section id="confusion" class="two wide">{_per_class(data)}{_confusion(data)}</section>'
    )


def _per_class(data: ReportData) -> str:
    conf = data.evaluation.confusion
    totals, rights = conf.sum(1).tolist(), conf.diag().tolist()
    rows = []
    for name, total, right in zip(data.classes, totals, rights, strict=True):
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
    counts, shares = conf.tolist(), rates.tolist()
    head = "".join(f'<th class="col"><span>{esc(c)}</span></th>' for c in classes)
    body = []
    for t, row_name in enumerate(classes):
        cells = []
        for p in range(len(classes)):
            n, rate = counts[t][p], shares[t][p]
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


def _class_table(data: ReportData) -> str:
    """Every class's accuracy and the class it is most often taken for, sortable by column."""
    conf = data.evaluation.confusion.long()
    off = conf.clone().fill_diagonal_(0)
    worst_count, worst = off.max(1)  # (K, K) -> (K,): the most frequent wrong prediction
    columns = (conf.sum(1), conf.diag(), worst, worst_count)
    rows = []
    for k, (total, right, w, wn) in enumerate(zip(*(c.tolist() for c in columns), strict=True)):
        acc = right / total if total else 0.0
        confused = f"{esc(data.classes[w])} ({wn})" if wn else "—"
        rows.append(
            f'<tr><th data-v="{esc(data.classes[k])}">{esc(data.classes[k])}</th>'
            f'<td class="num" data-v="{acc:.5f}"><span class="bar"><i style="width:'
            f'{100 * acc:.1f}%"></i></span>{acc:.1%}</td><td class="num" data-v="{total}">'
            f'{right}/{total}</td><td data-v="{wn}">{confused}</td></tr>'
        )
    return (
        f'<div><h2>Per-class accuracy ({len(data.classes):,} classes)</h2><p class="note">Click '
        "a column's head to sort by it (again: the other way).</p>"
        '<div class="scroll"><table class="perclass sortable" id="class-table"><thead><tr>'
        '<th data-sort="text">class</th><th data-sort="num">accuracy</th>'
        '<th data-sort="num">right / images</th><th data-sort="num">most often taken for</th>'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div></div>"
    )


def _top_pairs_table(data: ReportData) -> str:
    """The largest off-diagonal counts; each links to its cards in the gallery."""
    conf = data.evaluation.confusion.long()
    top = top_confusions(conf, data.config.top_pairs)
    m, k = data.mistakes, conf.shape[0]
    # cards per pair among those shown: one bincount, not a mask per pair
    shown = (m.labels.long() * k + m.preds.long()).bincount(minlength=k * k) if len(m) else None
    totals = conf.sum(1).tolist()
    rows = []
    for t, p, n in top:
        cards = int(shown[t * k + p]) if shown is not None else 0
        name = f"{esc(data.classes[t])} → {esc(data.classes[p])}"
        link = (
            f'<a href="#gallery" class="pair-link" data-label="{t}" data-pred="{p}">{name}</a>'
            if cards
            else name
        )
        rows.append(
            f'<tr class="top-pair" data-label="{t}" data-pred="{p}"><td>{link}</td>'
            f'<td class="num">{n}</td><td class="num">{n / max(totals[t], 1):.1%}</td>'
            f'<td class="num">{cards}</td></tr>'
        )
    note = shown_note(data)
    return (
        f'<div><h2>The {len(top)} most confused pairs</h2><p class="note">The largest counts '
        f"off the diagonal of the {k:,} × {k:,} confusion matrix (too large to draw as a table;"
        " the confusion.csv of `camlens evaluate` holds it whole). Click a pair to show only "
        "its cards below"
        + (f" (the gallery holds {esc(note)} mistakes)" if note else "")
        + '; "show all" clears.</p><div class="scroll"><table class="toppairs"><thead><tr>'
        "<th>true → predicted</th><th>images</th><th>of the true class</th><th>cards</th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div></div>"
    )
