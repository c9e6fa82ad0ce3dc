"""The compare figures: the table a person reads in a few seconds, and Adebayo's cascade."""

from __future__ import annotations

from matplotlib.figure import Figure
from torch import Tensor

from camlens.compare.table import SUBSETS, beats_baselines, indistinguishable_from
from camlens.metrics import BASELINE_KINDS, HIGHER_IS_BETTER, METRICS

__all__ = ["sanity_figure", "table_figure"]


def table_figure(rows: list[dict]) -> Figure:
    """Per subset a table: (method, layer) rows and the baselines below, metrics as columns.

    `rows`: the plain rows and the paired ones (with `vs`). Green: better than every baseline
    by the Holm-corrected paired test; red: worse than one; white: not told apart from one.
    The cells that cannot be told from the centre map are named in words under the table.
    """
    plain = [r for r in rows if not r.get("vs")]
    paired = [r for r in rows if r.get("vs")]
    keys = list(dict.fromkeys((r["method"], r["layer"]) for r in plain))
    keys = [k for k in keys if k[0] not in BASELINE_KINDS] + [
        k for k in keys if k[0] in BASELINE_KINDS
    ]
    cell = {(r["method"], r["layer"], r["subset"], r["metric"]): r for r in plain}
    wins = beats_baselines(rows)
    worse = {
        (r["method"], r["layer"], r["subset"], r["metric"])
        for r in paired
        if r["decision"] == "worse"
    }
    subsets = [s for s in SUBSETS if any(r["subset"] == s for r in plain)]
    notes = indistinguishable_from(paired, "centre")
    height = (0.32 * len(keys) + 0.9) * len(subsets) + 0.18 * len(notes) + 0.3
    fig = Figure(figsize=(1.5 * len(METRICS) + 1.5, height))
    for i, subset in enumerate(subsets):
        ax = fig.add_subplot(len(subsets) + 1, 1, i + 1)
        ax.axis("off")
        text, colours = [], []
        for method, layer in keys:
            line, col = [], []
            for metric in METRICS:
                key = (method, layer, subset, metric)
                r = cell[key]
                line.append(f"{r['mean']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]")
                if method in BASELINE_KINDS:
                    col.append("#e0e0e0")
                elif wins.get(key):
                    col.append("#b7e4b0")
                else:
                    col.append("#f6c6c0" if key in worse else "#ffffff")
            text.append(line)
            colours.append(col)
        arrows = [f"{m} {'↑' if HIGHER_IS_BETTER[m] else '↓'}" for m in METRICS]
        labels = [
            f"{m} {lay}" if m not in BASELINE_KINDS else f"[baseline] {m} {lay}".rstrip(" -")
            for m, lay in keys
        ]
        table = ax.table(
            cellText=text,
            cellColours=colours,
            rowLabels=labels,
            colLabels=arrows,
            loc="center",
            cellLoc="center",
        )
        table.auto_set_font_size(False)
        table.set_fontsize(7)
        table.scale(1, 1.2)
        n = next(r["n"] for r in plain if r["subset"] == subset)
        ax.set_title(
            f"{subset} ({n} images): mean [95% CI]; green = better than every baseline, "
            "red = worse than one (paired, Holm-corrected); white = not told apart",
            fontsize=8,
        )
    ax = fig.add_subplot(len(subsets) + 1, 1, len(subsets) + 1)
    ax.axis("off")
    lines = notes or ["every method is told apart from the centre map on some metric"]
    ax.text(0, 1, "\n".join(lines), fontsize=7, va="top", transform=ax.transAxes)
    return fig


def sanity_figure(sanity: dict[str, dict], maps: dict[str, Tensor]) -> Figure:
    """Adebayo fig. 2: one image's map per method through the cascade; the mean Spearman curve."""
    methods = list(sanity)
    steps = len(next(iter(maps.values())))
    fig = Figure(figsize=(0.8 * steps + 5, 0.8 * len(methods) + 1))
    grid = fig.add_gridspec(len(methods), steps + 6)
    for i, method in enumerate(methods):
        for j in range(steps):
            ax = fig.add_subplot(grid[i, j])
            ax.imshow(maps[method][j].cpu().numpy(), cmap="jet", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(method, fontsize=7, rotation=0, ha="right", va="center")
            if i == 0:
                name = "original" if j == 0 else sanity[method]["steps"][j - 1]
                ax.set_title(name, fontsize=6, rotation=45, ha="left")
    ax = fig.add_subplot(grid[:, steps + 1 :])
    for method in methods:
        s = sanity[method]
        verdict = s.get("state", "passes" if s["passed"] else "FAILS")
        ax.plot(
            range(1, len(s["spearman"]) + 1),
            s["spearman"],
            marker="o",
            ms=3,
            label=f"{method} ({verdict})",
        )
    ax.axhline(0.5, color="grey", ls="--", lw=0.8)  # decorrelated below half the floor (1)
    first = sanity[methods[0]]
    ax.set_xticks(range(1, len(first["steps"]) + 1))
    ax.set_xticklabels(first["steps"], rotation=60, fontsize=6)
    ax.set_ylim(-0.2, 1.05)
    ax.set_ylabel(f"mean Spearman with the original map ({first['layer']})", fontsize=7)
    ax.set_title(
        "cascading randomisation, output to input; verdict per method in the legend", fontsize=8
    )
    ax.legend(fontsize=6)
    return fig
