"""`ReportData` -> one self-contained HTML file: every picture a data URI, CSS and JS inline.

The page works from disk with no network. It is written to disk piece by piece as it is made
(`page_parts`): a section, or a chunk of gallery cards, at a time, so that no copy of the whole
page is held in memory. Its sections, one module each:

    summary.py  the run, per-class accuracy, the confusion (a K x K table up to 30 classes,
                beyond: a sortable class table and the most confused pairs)
    pairs.py    mean maps per frequent confusion pair
    trust.py    "Can these maps be trusted?" (compare.json)
    epochs.py   "Maps across training" (over-epochs.json)
    cards.py    the gallery: a card per mistake shown, the toolbar
    markup.py   escaping and picture encoding, for every page camlens writes

Gallery maps of every (method, layer) are embedded once: the default one in the `<img>` tags,
the others in a JSON block at the end, from which the script swaps image sources when the
method or layer changes.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

from camlens.atomic import WriteError
from camlens.report.cards import gallery_parts, methods_of, toolbar
from camlens.report.compute import ReportData
from camlens.report.epochs import epochs_section
from camlens.report.markup import MIME, esc
from camlens.report.pairs import pairs_section, variant_key
from camlens.report.summary import classes_section, data_label, summary_section
from camlens.report.trust import trust_section

__all__ = ["page_parts", "render_html", "render_report"]

TRUST_LINK = '<a href="#trust">trust</a>'
EPOCHS_LINK = '<a href="#epochs">across epochs</a>'


def _template() -> tuple[str, str, str]:
    """The page's template cut around its body and its JSON block: (head, middle, tail)."""
    text = (resources.files("camlens") / "assets" / "report_template.html").read_text()
    head, rest = text.split("{{body}}")
    middle, tail = rest.split("{{payload}}")
    return head, middle, tail


def page_parts(data: ReportData) -> Iterator[str]:
    """The whole page, in pieces whose concatenation is the page."""
    label = data_label(data)
    head, middle, tail = _template()
    yield head.replace("{{title}}", esc(f"camlens report · {label}"))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    yield (
        f'<header class="top"><h1>camlens report</h1><p class="sub">{esc(label)} · test '
        f"accuracy <b>{data.evaluation.accuracy:.2%}</b> · {len(data.evaluation.mistakes)} "
        f"misclassified · generated {stamp}</p><nav>"
        '<a href="#summary">run</a><a href="#confusion">classes &amp; confusion</a>'
        '<a href="#pairs">pairs</a><a href="#gallery">gallery</a>'
        f"{TRUST_LINK if data.trust else ''}"
        f"{EPOCHS_LINK if data.over_epochs else ''}</nav></header>"
    )
    yield f"{toolbar(data)}<main>"
    for section in (summary_section, classes_section, pairs_section, trust_section):
        yield section(data)
    yield epochs_section(data)
    payload: dict = {
        "classes": list(data.classes),
        "prefix": f"data:{MIME[data.config.image_format]};base64,",
    }
    yield from gallery_parts(data, payload)
    yield "</main>"
    if "default" not in payload and methods_of(data) and data.layers:  # no gallery, pairs only
        payload["default"] = variant_key(methods_of(data)[0], data.layers[-1])
    yield middle
    # "</" would end the script element early; JSON allows the escaped form. A view at a time:
    # the other views' maps are the largest piece of the block
    variants = payload.pop("variants", {})
    blob = json.dumps(payload, separators=(",", ":"))[:-1]
    yield blob.replace("</", "<\\/") + ',"variants":{'
    for n, (key, variant) in enumerate(variants.items()):
        piece = json.dumps({key: variant}, separators=(",", ":"))[1:-1]
        yield ("," if n else "") + piece.replace("</", "<\\/")
    yield "}}" + tail


def render_html(data: ReportData) -> str:
    """The whole page as a string (`render_report` writes it without holding it)."""
    return "".join(page_parts(data))


def render_report(data: ReportData, out: str | Path) -> Path:
    """Write `out`/report.html as it is made, into a temporary file renamed over the target
    once whole and synced: a reader or a killed run sees the old page or the new one."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.html"
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".report.html.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for part in page_parts(data):
                f.write(part)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise WriteError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
