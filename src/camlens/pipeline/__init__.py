"""The whole job as library functions taking one `ExplainPlan`: what the CLI and notebook call.

    run(config, data, out, plan) -> Outcome     train (resuming a killed run), then report
    demo(out, plan) -> Outcome                  the shipped model on the bundled sample
    explain_model(model, data, out, plan, ...) -> Outcome   any trained classifier:
        evaluate (out/eval) -> write_galleries -> [compare the gallery's own maps] ->
        compute_report -> report.html; `report` is its older name, the same function
    write_galleries(model, data, out, plan) -> Galleries
        pick mistakes (the plan's filter, sort, limit) -> stream_mistake_maps -> each of
        plan.outputs, per method (OUTPUTS: out/gallery/<method>/, out/maps/<method>.safetensors)
    prepare_plan(model, plan, image_size) -> plan   layers resolved, checked against the model:
                                                once per job, at its entry; the steps after it
                                                take the checked plan
    choose_layers(model, layers, image_size)    --layer checked against the layers a map can
                                                be read from; None: the last before pooling
    report_facts(opened) -> dict                what the report says of an open_model() model
    diff_checkpoints(a, b, data, out, plan) -> dict  two models side by side -> out/diff.html

Split by step: `galleries` (pick, explain, write the outputs), `outputs` (their registry),
`reports` (explain_model), `runs` (run, demo), `diffs` (diff_checkpoints).
The maps are computed by the explain step only: the gallery draws its stream, the report's
pair statistics read the same maps and stream the pairs' other images through it.
Errors a user can cause are raised as the package's own error types, with one-line messages.
`explain_model` (as `compare` and `diff_models`) takes the user's own test data
as it is (a DataLoader, a torch Dataset, arrays) besides a camlens `Dataset`: adapted once, at
the entry, by `camlens.classifier.adapt_user_input`.
"""

from camlens.pipeline.diffs import diff_checkpoints
from camlens.pipeline.galleries import (
    LAYERS,
    Galleries,
    choose_layers,
    prepare_plan,
    write_galleries,
)
from camlens.pipeline.outputs import OUTPUTS, OutputJob
from camlens.pipeline.reports import Outcome, describe_run, explain_model, report, report_facts
from camlens.pipeline.runs import demo, run

__all__ = [
    "LAYERS",
    "OUTPUTS",
    "OutputJob",
    "Galleries",
    "Outcome",
    "choose_layers",
    "demo",
    "describe_run",
    "diff_checkpoints",
    "explain_model",
    "prepare_plan",
    "report",
    "report_facts",
    "run",
    "write_galleries",
]
