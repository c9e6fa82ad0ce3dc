"""Can these maps be trusted? Every method and layer scored on the mistakes and on correct images.

    result = compare(model, data, out, methods=("gradcam", "scorecam"), layers=("layer4",))
    result.rows          # one dict per (method, layer, subset, metric): mean, ci_low, ci_high, n
    result.sanity        # method -> the randomisation cascade's Spearman curve and its verdict

`table` picks the images and builds the rows, `figures` draws them, `run` does the scoring
and writes compare.csv, compare.json (what the report reads), compare.png and sanity.png.
"""

from camlens.compare.figures import sanity_figure, table_figure
from camlens.compare.run import FILES, CompareResult, compare
from camlens.compare.table import COLUMNS, SUBSETS, beats_baselines, select_subsets

__all__ = [
    "COLUMNS",
    "FILES",
    "SUBSETS",
    "CompareResult",
    "beats_baselines",
    "compare",
    "sanity_figure",
    "select_subsets",
    "table_figure",
]
