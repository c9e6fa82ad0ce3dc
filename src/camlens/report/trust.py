"""The report's "Can these maps be trusted?": compare.json of `camlens.compare`, as it says.

The grid test's line and table lead (which method and layer to believe), then the table of
faithfulness metrics per subset against the baselines, each method's sanity state with its
reasons, and the sanity curves.
"""

from __future__ import annotations

from matplotlib.figure import Figure

from camlens.metrics import BASELINE_KINDS, GRID_BASELINES
from camlens.plots import figure_png
from camlens.report.compute import ReportData
from camlens.report.markup import b64, esc

__all__ = ["trust_section"]


def trust_section(data: ReportData) -> str:
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
            # every baseline row, the random map at a layer's resolution included, is a reference
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
    curve = b64(figure_png(fig))
    paired = esc(t.get("settings", {}).get("paired", "paired bootstrap, Holm-corrected"))
    return (
        '<section id="trust"><h2>Can these maps be trusted?</h2><p class="note">Each map scored '
        "by deletion and insertion (Petsiuk 2018), Average Drop and Increase (Chattopadhay 2018), "
        "ROAD (Rong 2022) and ARCC (Domeniconi 2026), beside the baselines (a smooth random map "
        "at each layer's resolution, a centred map) scored the same way on the same images. Green: "
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
    the layer's resolution and at the input's size, pointing; green where it beats centre and
    random."""
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
