"""Can these maps be trusted? Every method and layer scored on the mistakes and on correct images.

    plan = ExplainPlan(methods=("gradcam", "scorecam"), layers=("layer4",), compare_limit=32)
    result = compare(model, data, out, plan)
    result.rows          # one dict per (method, layer, subset, metric): mean, ci_low, ci_high, n
    result.paired        # each against each baseline: diff, interval, Holm-corrected decision
    result.sanity        # method -> the sanity checks' numbers and a named state (VERDICTS)

    result.summary       # the grid test's line, each method's state, the paired headline
    result.grid          # the grid localisation test (`grid`): which map finds its class

`run` builds one `CompareJob` (job.py: what every step reads) and runs the steps in order:
`budget` (probe each method, estimate the cost), `scoring` (every task's scores, the table),
`table` (the images, the rows, the paired cells), `sanity`, `grid` (the grid localisation test,
camlens.metrics.grid, whose line leads the summary), writing compare.csv, compare.json (what the
report reads), compare.png and sanity.png as each step ends; `figures` draws them and `summary`
words the verdicts. Engines come from `camlens.explain` (`engine_for`), and inside a report
the mistakes' maps from its explain stream; `engines=` adds methods of your own,
`(model, layers) -> engine`, by name.
"""

from camlens.compare.figures import sanity_figure, table_figure
from camlens.compare.grid import grid_line, grid_test
from camlens.compare.job import CompareJob, EngineMaker
from camlens.compare.run import (
    COMPARE_LIMIT,
    COMPARE_METHODS,
    COMPARE_PLAN,
    COMPARE_TOP_K,
    FILES,
    CompareConfig,
    CompareResult,
    compare,
    with_top_k,
)
from camlens.compare.summary import headline, sanity_lines, summary_of
from camlens.compare.table import (
    COLUMNS,
    SUBSETS,
    beats_baselines,
    indistinguishable_from,
    select_subsets,
)

__all__ = [
    "COLUMNS",
    "COMPARE_LIMIT",
    "COMPARE_METHODS",
    "COMPARE_PLAN",
    "COMPARE_TOP_K",
    "FILES",
    "SUBSETS",
    "CompareConfig",
    "CompareJob",
    "CompareResult",
    "EngineMaker",
    "beats_baselines",
    "compare",
    "grid_line",
    "grid_test",
    "headline",
    "indistinguishable_from",
    "sanity_figure",
    "with_top_k",
    "sanity_lines",
    "select_subsets",
    "summary_of",
    "table_figure",
]
