"""What a folder camlens wrote holds for the viewer, read from json, csv and safetensors only.

`read_folder(root)` finds, in a run, report, explain or evaluate folder: the model and data it
was made with (eval/metrics.json, or the run's checkpoint), the mistakes (misclassified.csv
and its .safetensors), each gallery's cards and counterfactual columns (gallery/METHOD/
index.csv) and the compare result (compare.json). Nothing is unpickled.

`inside(root, path)` is the one gate for a file the page asks for: relative, no `..`, and
still under `root` once every symlink is resolved.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from camlens.data import DataError
from camlens.evaluate import Mistakes, read_mistakes

__all__ = ["Folder", "Refused", "inside", "read_folder", "trust_of"]

# what `camlens demo` writes as its checkpoint and data facts: the bundled model and sample
_SHIPPED = {"resnet18-layernorm": "shipped-layer", "resnet18-cifar10": "shipped"}
# the sample's source as `load_dataset("sample")` names it, and as `camlens demo` describes it
_SAMPLE_FACTS = ("CIFAR-10 (JPEG q75) test sample", "sample of the test split")


_DROP = re.compile(r"^(cf\d+)_drop$")  # index.csv's counterfactual margin drop per fraction


class Refused(Exception):
    """A path the page may not read: outside the folder, or not a plain file in it."""


@dataclass(frozen=True)
class Folder:
    """What `read_folder` found; None or empty where the folder has no such file."""

    root: Path
    model: str | None  # a --model spec: the run's checkpoint, eval/metrics.json's facts
    data: str | None  # a --data source
    mistakes: Mistakes | None  # misclassified.csv (+ .safetensors), without images
    cards: dict[str, dict[int, str]] = field(default_factory=dict)  # method -> index -> card
    cf: dict[str, Tensor] | None = None  # {"indices", "drop", "verdict"} of the first gallery
    compare: dict | None = None  # compare.json
    maps: dict[str, Path] = field(default_factory=dict)  # method -> maps/METHOD.safetensors


def inside(root: Path, path: str) -> Path:
    """`path` (relative to `root`, as the page names it) as a plain file under `root`."""
    if not path or path.startswith(("/", "\\")) or ":" in path or "\x00" in path:
        raise Refused(f"{path!r} is not a path inside the opened folder")
    parts = Path(path).parts
    if any(p in ("..", ".") for p in parts) or "\\" in path:
        raise Refused(f"{path!r} is not a path inside the opened folder")
    base = root.resolve()
    full = (base / path).resolve()  # symlinks followed: one that points out is refused
    if not full.is_relative_to(base):
        raise Refused(f"{path!r} leads outside the opened folder")
    if not full.is_file():
        raise FileNotFoundError(path)
    return full


def _first(root: Path, *names: str) -> Path | None:
    return next((root / n for n in names if (root / n).is_file()), None)


def _facts(root: Path) -> tuple[str | None, str | None]:
    """(model spec, data source) the folder was made with, as far as its files say."""
    if (root / "checkpoint.safetensors").is_file():  # a `camlens run` / `train` folder
        model = str(root / "checkpoint.safetensors")
    else:
        model = None
    metrics = _first(root, "eval/metrics.json", "metrics.json")
    facts = json.loads(metrics.read_text()) if metrics else {}
    data = facts.get("data")
    meta = root / "checkpoint.json"  # a `train` folder alone: the data it was trained on
    if data is None and meta.is_file():
        data = json.loads(meta.read_text()).get("data_source")
    if model is None:
        model = facts.get("model")
        checkpoint = str(facts.get("checkpoint", ""))
        if model is None and checkpoint.startswith("shipped with camlens"):
            model = next(v for k, v in _SHIPPED.items() if k in checkpoint)
        elif model is None and checkpoint.endswith(".safetensors"):
            model = checkpoint
    if data is not None and any(f in data for f in _SAMPLE_FACTS):
        data = "sample"
    return model, data


def _verdict_codes(row: dict[str, str], tag: str) -> int:
    """index.csv's cf columns -> a position in rows.CF_VERDICTS (stayed, left, to_true)."""
    if row.get(f"{tag}_to_true") == "True":
        return 2
    return 1 if row.get(f"{tag}_left") == "True" else 0


def _gallery(root: Path) -> tuple[dict[str, dict[int, str]], dict[str, Tensor] | None]:
    """Each gallery's cards by test index; the first gallery's counterfactual columns."""
    cards, cf = {}, None
    for index in sorted(root.glob("gallery/*/index.csv")):
        with open(index, newline="") as f:
            rows = list(csv.DictReader(f))
        folder = index.parent.relative_to(root)
        cards[index.parent.name] = {int(r["index"]): f"{folder}/{r['card']}" for r in rows}
        tags = [m.group(1) for k in (rows[0] if rows else {}) if (m := _DROP.match(k))]
        if cf is None and tags:
            tag = "cf10" if "cf10" in tags else tags[0]  # the headline fraction
            cf = {
                "indices": torch.tensor([int(r["index"]) for r in rows]),
                "drop": torch.tensor([float(r[f"{tag}_drop"]) for r in rows]),
                "verdict": torch.tensor([_verdict_codes(r, tag) for r in rows]),
            }
    return cards, cf


def read_folder(root: str | Path) -> Folder:
    """What folder `root` holds for the viewer (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder: camlens view opens a run, report or explain one")
    model, data = _facts(root)
    csv_path = _first(root, "eval/misclassified.csv", "misclassified.csv")
    mistakes = read_mistakes(csv_path) if csv_path else None
    compared = _first(root, "compare.json", "compare/compare.json")
    cards, cf = _gallery(root)
    return Folder(
        root=root,
        model=model,
        data=data,
        mistakes=mistakes,
        cards=cards,
        cf=cf,
        compare=json.loads(compared.read_text()) if compared else None,
        maps={p.stem: p for p in sorted(root.glob("maps/*.safetensors"))},
    )


def _warning(r: dict) -> str | None:
    """A paired row's failure in words: worse than, or no better than, its baseline."""
    where = f"{r.get('metric')} on {r.get('subset')}"
    if r.get("decision") == "worse":
        return f"worse than the {r.get('vs')} map ({where})"
    if r.get("decision") == "indistinguishable":
        return f"no better than the {r.get('vs')} map ({where})"
    return None


def trust_of(compare: dict | None, method: str, layer: str) -> dict | None:
    """What compare.json says of `method` at `layer`: its grid-test scores, paired verdicts
    and the method's sanity state, with a warning for each check it failed; None: the folder
    holds no compare result."""
    if compare is None:
        return None
    grid = compare.get("grid") or {}

    def mine(rows: list[dict]) -> list[dict]:
        return [r for r in rows if r.get("method") == method and r.get("layer") == layer]

    scores = [
        {k: r.get(k) for k in ("metric", "mean", "ci_low", "ci_high", "n")}
        for r in mine(grid.get("rows", []))
    ]
    paired = [
        {k: r.get(k) for k in ("subset", "metric", "vs", "decision")}
        for r in mine(compare.get("paired", []) + grid.get("paired", []))
    ]
    warnings = [w for r in paired if (w := _warning(r))]
    sanity = (compare.get("sanity") or {}).get(method)
    state = None
    if isinstance(sanity, dict):
        state = {"state": sanity.get("state"), "layer": sanity.get("layer")}
        if sanity.get("state") != "passes":
            verdict = (compare.get("verdicts") or {}).get(sanity.get("state"), "")
            warnings.insert(0, f"sanity: {sanity.get('state')} at {sanity.get('layer')}: {verdict}")
    return {
        "method": method,
        "layer": layer,
        "scored": bool(scores or paired or state),
        "grid": scores,
        "paired": paired,
        "sanity": state,
        "warnings": warnings,
    }
