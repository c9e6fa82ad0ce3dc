"""The whole job as library functions: what the `camlens` command and the notebook both call.

    run(config, data, out, ...) -> Outcome      train (resuming a killed run), then explain_model
    demo(out, ...) -> Outcome                   the shipped model on the bundled sample
    report_facts(opened) -> dict                what the report says of an open_model() model
    report(model, data, out, ...) -> Outcome    any trained classifier: evaluate into out/eval,
                                                then explain_model (run and demo end with it)
    choose_layers(model, layers, image_size)    --layer checked against the layers a map can
                                                be read from; None: the last before pooling
    explain_model(model, data, out, ...) -> Outcome
        evaluate -> explain the most confident mistakes -> a gallery per method
        [-> compare the methods' faithfulness] -> report.html
    write_galleries(model, data, out, ...) -> Galleries
        pick mistakes (filter, sort, limit) -> explain -> out/gallery/<method>/ per method
    load_matching_data(source, meta) -> Dataset  the data a checkpoint was trained on
    diff_checkpoints(a, b, data, out, ...) -> dict  two models side by side -> out/diff.html

Split by step: `galleries` (pick, explain, draw), `reports` (evaluate, explain_model,
report), `runs` (run, demo), `diffs` (diff_checkpoints).
The maps are computed once, by the explain step; the galleries and the report draw from them.
Errors a user can cause are raised as the package's own error types, with one-line messages.
"""

from camlens.pipeline.diffs import diff_checkpoints
from camlens.pipeline.galleries import (
    LAYERS,
    Galleries,
    choose_layers,
    load_matching_data,
    write_galleries,
)
from camlens.pipeline.reports import Outcome, describe_run, explain_model, report, report_facts
from camlens.pipeline.runs import demo, run

__all__ = [
    "LAYERS",
    "Galleries",
    "Outcome",
    "choose_layers",
    "demo",
    "describe_run",
    "diff_checkpoints",
    "explain_model",
    "load_matching_data",
    "report",
    "report_facts",
    "run",
    "write_galleries",
]
