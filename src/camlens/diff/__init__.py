"""Two models side by side on one test split (e.g. batch norm vs layer norm).

    d = diff_models(model_a, model_b, data, names=("batch norm", "layer norm"))
    files = write_diff(d, "out")      # out/diff.html (self-contained) and out/diff.json

`compute` evaluates both models, groups their mistakes (shared, only A, only B; counts per
class) and measures, on the shared mistakes, whether they predict the same wrong class and
whether their maps agree (Spearman, IoU of the top 20% of pixels) at each layer; `render`
writes the page in the report's style.
"""

from camlens.diff.compute import GROUPS, TARGETS, ModelDiff, diff_models, top_iou
from camlens.diff.render import FILES, agreement_figure, diff_json, render_html, write_diff

__all__ = [
    "FILES",
    "GROUPS",
    "TARGETS",
    "ModelDiff",
    "agreement_figure",
    "diff_json",
    "diff_models",
    "render_html",
    "top_iou",
    "write_diff",
]
