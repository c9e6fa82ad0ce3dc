"""What a compare found, in the words the CLI prints and compare.json carries for the report.

One line per method with its sanity state ("gradcam layer4: passes", "eigencam layer4:
class-blind — ..."), then the paired headline: which cells beat every baseline on the metrics
that rank maps as known evidence does, and which cannot be told apart from the centre map;
first, where a subset has too few images to test, that it has.
"""

from __future__ import annotations

import json
from pathlib import Path

from camlens.compare.table import FAITHFUL, beats_baselines, indistinguishable_from
from camlens.metrics import PAIRED_MIN_IMAGES, TOO_FEW, VERDICTS

__all__ = ["headline", "sanity_lines", "summary_of"]


def sanity_lines(sanity: dict[str, dict]) -> list[str]:
    """One line per method: its named state and, unless it passes, the first reason why."""
    lines = []
    for method, s in sanity.items():
        line = f"{method} {s['layer']}: {s['state']}"
        if s["state"] != "passes":
            line += " — " + (s["reasons"][0] if s.get("reasons") else VERDICTS[s["state"]])
        lines.append(line)
    return lines


def headline(rows: list[dict], alpha: float) -> list[str]:
    """The paired verdicts in words, read from the plain and paired rows together."""
    wins: dict[tuple[str, str, str], list[str]] = {}
    for (method, layer, subset, metric), win in beats_baselines(rows).items():
        if win and metric in FAITHFUL:
            wins.setdefault((method, layer, subset), []).append(metric)
    rule = f"paired, Holm-corrected at alpha {alpha:g}"
    few: dict[str, int] = {}  # subset -> its images, where its cells were too few to test
    for r in rows:
        if r.get("vs") and r["decision"] == TOO_FEW:
            few[r["subset"]] = r["n"]
    lines = []
    if few:
        lines.append(
            "too few images for the paired verdicts on "
            + " and ".join(f"{n} {subset}" for subset, n in few.items())
            + f": they need {PAIRED_MIN_IMAGES} or more a subset (--limit {PAIRED_MIN_IMAGES} "
            "or more), so no interval and no decision is given"
        )
        if len(few) == len({r["subset"] for r in rows if r.get("vs")}):
            return lines  # nothing was tested: no "beats" or "cannot be told apart" to say
    if not wins:
        lines += [f"no method beats every baseline on {', '.join(FAITHFUL)} ({rule})"]
    else:
        lines += [
            f"{method} {layer} ({subset}) beats every baseline on "
            f"{', '.join(m for m in FAITHFUL if m in metrics)} ({rule})"
            for (method, layer, subset), metrics in wins.items()
        ]
    return lines + indistinguishable_from(rows, "centre")


def summary_of(folder: str | Path) -> list[str]:
    """The summary lines of the compare.json in `folder` (what `run --compare` wrote)."""
    return json.loads((Path(folder) / "compare.json").read_text())["summary"]
