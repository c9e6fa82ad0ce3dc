"""Print the trust table of docs/trust.md from a compare folder's compare.json.

    python tools/trust_table.py OUT        # OUT: what `camlens compare --out OUT` wrote

Each method cell: the method's mean; its paired mean difference from the centre map with that
cell's own 95% bootstrap-t interval (uncorrected) and the Holm-corrected decision; the
decision against the smooth random map of the same layer. Then the baselines' means.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

METRICS = ("deletion", "insertion", "road")
MARK = {"better": "**better**", "worse": "worse", "indistinguishable": "~", "too few images": "?"}


def cell(plain: dict, paired: dict) -> str:
    centre, random = paired["centre"], paired["random"]
    # a cell on too few images has no interval (compare's PAIRED_MIN_IMAGES)
    low, high = centre["diff_low"], centre["diff_high"]
    interval = "" if low is None else f"[{low:+.3f}, {high:+.3f}] "
    return (
        f"{plain['mean']:.3f}; centre {centre['diff']:+.3f} {interval}"
        f"{MARK[centre['decision']]}; random {random['diff']:+.3f} {MARK[random['decision']]}"
    )


def tables(result: dict) -> str:
    plain = {(r["method"], r["layer"], r["subset"], r["metric"]): r for r in result["rows"]}
    paired: dict[tuple, dict] = {}
    for r in result["paired"]:
        paired.setdefault((r["method"], r["layer"], r["subset"], r["metric"]), {})[r["vs"]] = r
    state = {m: s["state"] for m, s in result["sanity"].items()}
    sanity_layer = next(iter(result["sanity"].values()))["layer"]
    lines = [
        f"| subset | method | layer | sanity ({sanity_layer}) | "
        + " | ".join(("deletion ↓", "insertion ↑", "ROAD ↑"))
        + " |",
        "|---|---|---|---|---|---|---|",
    ]
    cells = sorted(
        {k[:3] for k in paired},
        key=lambda k: (k[2] != "mistakes", result["settings"]["methods"].index(k[0]), k[1]),
    )
    for method, layer, subset in cells:
        row = [
            cell(plain[(method, layer, subset, m)], paired[(method, layer, subset, m)])
            for m in METRICS
        ]
        lines.append(
            f"| {subset} | {method} | {layer} | {state.get(method, '-')} | "
            + " | ".join(row)
            + " |"
        )
    lines += [
        "",
        "| subset | baseline | deletion ↓ | insertion ↑ | ROAD ↑ |",
        "|---|---|---|---|---|",
    ]
    baselines = sorted(
        {(k[2], k[0], k[1]) for k in plain if k[0] in ("random", "centre")},
        key=lambda k: (k[0] != "mistakes", k[1] != "random", k[2]),
    )
    for subset, kind, layer in baselines:
        row = [plain[(kind, layer, subset, m)] for m in METRICS]
        means = [f"{r['mean']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]" for r in row]
        lines.append(f"| {subset} | {kind} {layer} | " + " | ".join(means) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the folder `camlens compare --out` wrote")
    args = parser.parse_args()
    print(tables(json.loads((args.out / "compare.json").read_text())))


if __name__ == "__main__":
    main()
