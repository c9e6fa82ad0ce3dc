"""Can these maps be trusted? Every method and layer scored on the mistakes and on correct images.

    result = compare(model, data, out, methods=("gradcam", "scorecam"), layers=("layer4",))
    result.rows          # one dict per (method, layer, subset, metric): mean, ci_low, ci_high, n
    result.paired        # each against each baseline: diff, interval, Holm-corrected decision
    result.sanity        # method -> the sanity checks' numbers and a named state (VERDICTS)

`table` picks the images and builds the rows, `figures` draws them, `run` does the scoring
and writes compare.csv, compare.json (what the report reads), compare.png and sanity.png.
"""

from camlens.compare.figures import sanity_figure, table_figure
from camlens.compare.run import COMPARE_METHODS, FILES, CompareResult, compare
from camlens.compare.table import (
    COLUMNS,
    SUBSETS,
    beats_baselines,
    indistinguishable_from,
    select_subsets,
)

__all__ = [
    "COLUMNS",
    "COMPARE_METHODS",
    "FILES",
    "SUBSETS",
    "CompareResult",
    "beats_baselines",
    "compare",
    "indistinguishable_from",
    "sanity_figure",
    "select_subsets",
    "table_figure",
]
