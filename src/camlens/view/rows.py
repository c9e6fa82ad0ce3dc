"""The browsable rows: one tensor per column, filtered, sorted and paged without a Python loop.

A `Rows` holds every image the viewer can list (the mistakes, and on request the correct
images), one tensor per column. `Query` is what the page asks for; `Rows.page` answers it with
tensor masks and one `argsort`, then turns only the page's rows into Python objects, so that
50,000 images answer as fast as 100 (the server never sends more than a page).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from camlens.evaluate import Mistakes

__all__ = ["CF_VERDICTS", "SORTS", "Query", "Rows", "PAGE_MAX"]

SORTS = ("confidence", "margin", "cf_drop", "index")
PAGE_MAX = 200  # rows one request may ask for
# the counterfactual verdict of a mistake, as index.csv's cf columns say it (code = position):
# removing the top of its map left the prediction as it was, moved it to another wrong
# class, or to the true class; "none": the folder holds no counterfactual test
CF_VERDICTS = ("stayed", "left", "to_true")


def _top(t: Tensor) -> int:
    """The largest value of an index tensor; -1 when empty."""
    return int(t.max()) if t.numel() else -1


@dataclass(frozen=True)
class Query:
    """A page of rows: filters (None: any), a sort, and where the page starts."""

    correct: bool = False  # also list the correct images
    label: int | None = None  # true class
    pred: int | None = None  # predicted class (label and pred together: a confusion cell)
    conf_min: float = 0.0
    conf_max: float = 1.0
    cf: str | None = None  # one of CF_VERDICTS
    sort: str = "confidence"  # SORTS; largest first, but `index` ascending
    offset: int = 0
    limit: int = 50

    def __post_init__(self) -> None:
        if self.sort not in SORTS:
            raise ValueError(f"unknown sort {self.sort!r}: choose from {', '.join(SORTS)}")
        if self.cf is not None and self.cf not in CF_VERDICTS:
            raise ValueError(f"unknown verdict {self.cf!r}: choose from {', '.join(CF_VERDICTS)}")
        if not 1 <= self.limit <= PAGE_MAX or self.offset < 0:
            raise ValueError(f"limit must be 1..{PAGE_MAX} and offset >= 0")


@dataclass(frozen=True)
class Rows:
    """Columns over the listed images, on the CPU; row r is test image `indices[r]`."""

    indices: Tensor  # (N,) long: positions in the test split
    labels: Tensor  # (N,) long
    preds: Tensor  # (N,) long
    confidence: Tensor  # (N,) float: probability of the prediction
    margins: Tensor  # (N,) float: logit of the prediction minus logit of the true class
    cf_drop: Tensor  # (N,) float: the counterfactual's margin drop; NaN: not tested
    cf_verdict: Tensor  # (N,) int8: position in CF_VERDICTS; -1: not tested

    def __len__(self) -> int:
        return self.indices.shape[0]

    @classmethod
    def of_mistakes(cls, m: Mistakes, cf: dict[str, Tensor] | None = None) -> Rows:
        """Rows of `m`; `cf` {"indices", "drop", "verdict"} from a gallery's index.csv."""
        n = len(m)
        drop = torch.full((n,), float("nan"))
        verdict = torch.full((n,), -1, dtype=torch.int8)
        if cf is not None and len(cf["indices"]):
            # test index -> row, as a lookup tensor: no dict walked per row
            where = torch.full((max(_top(m.indices), _top(cf["indices"])) + 1,), -1)
            where[m.indices] = torch.arange(n)
            rows = where[cf["indices"]]
            known = rows >= 0
            drop[rows[known]] = cf["drop"][known].float()
            verdict[rows[known]] = cf["verdict"][known].to(torch.int8)
        return cls(
            m.indices.long(),
            m.labels.long(),
            m.preds.long(),
            m.confidence.float(),
            m.margins.float(),
            drop,
            verdict,
        )

    @classmethod
    def of_logits(cls, logits: Tensor, labels: Tensor) -> Rows:
        """Every image of a split from its (N, K) logits: the correct ones and the mistakes."""
        probs = logits.float().softmax(1)
        preds = logits.argmax(1)
        rows = torch.arange(logits.shape[0])
        n = rows.shape[0]
        return cls(
            rows,
            labels.long().cpu(),
            preds.cpu(),
            probs[rows, preds].cpu(),
            (logits[rows, preds] - logits[rows, labels.long()]).float().cpu(),
            torch.full((n,), float("nan")),
            torch.full((n,), -1, dtype=torch.int8),
        )

    def with_cf_of(self, other: Rows) -> Rows:
        """These rows with the counterfactual columns of `other` where it has the same image."""
        top = max(_top(self.indices), _top(other.indices)) + 1
        where = torch.full((top,), -1)
        where[self.indices] = torch.arange(len(self))
        rows = where[other.indices]
        known = rows >= 0
        drop, verdict = self.cf_drop.clone(), self.cf_verdict.clone()
        drop[rows[known]] = other.cf_drop[known]
        verdict[rows[known]] = other.cf_verdict[known]
        return Rows(self.indices, self.labels, self.preds, self.confidence, self.margins,
                    drop, verdict)  # fmt: skip

    def mask(self, q: Query) -> Tensor:
        """(N,) bool: the rows `q`'s filters keep."""
        keep = (self.confidence >= q.conf_min) & (self.confidence <= q.conf_max)
        if not q.correct:
            keep &= self.preds != self.labels
        if q.label is not None:
            keep &= self.labels == q.label
        if q.pred is not None:
            keep &= self.preds == q.pred
        if q.cf is not None:
            keep &= self.cf_verdict == CF_VERDICTS.index(q.cf)
        return keep

    def page(self, q: Query, classes: Sequence[str]) -> tuple[int, list[dict]]:
        """How many rows `q` keeps, and its page of them as dicts (the only per-row loop)."""
        kept = self.mask(q).nonzero().flatten()
        key = {
            "confidence": -self.confidence,
            "margin": -self.margins,
            # untested rows (NaN) last
            "cf_drop": -torch.nan_to_num(self.cf_drop, nan=-float("inf")),
            "index": self.indices.float(),
        }[q.sort][kept]
        chosen = kept[key.argsort(stable=True)][q.offset : q.offset + q.limit]
        cols = {f.name: getattr(self, f.name)[chosen].tolist() for f in fields(self)}
        page = []
        for r in range(len(chosen)):
            verdict = cols["cf_verdict"][r]
            drop = cols["cf_drop"][r]
            page.append(
                {
                    "index": cols["indices"][r],
                    "label": classes[cols["labels"][r]],
                    "pred": classes[cols["preds"][r]],
                    "confidence": round(cols["confidence"][r], 4),
                    "margin": round(cols["margins"][r], 4),
                    "cf_drop": None if drop != drop else round(drop, 4),  # NaN: untested
                    "cf": CF_VERDICTS[verdict] if verdict >= 0 else None,
                }
            )
        return int(kept.shape[0]), page

    def find(self, index: int) -> int | None:
        """The row of test image `index`, or None."""
        hit = (self.indices == index).nonzero().flatten()
        return int(hit[0]) if len(hit) else None
