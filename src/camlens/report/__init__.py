"""One self-contained HTML report of a trained model: where it looks when it gets images wrong.

    compute_report(model, split, classes, plan, *, explained, evaluation, facts, config)
                    -> ReportData (tensors, no HTML): the mistakes shown come with their maps
                    (`explained`, the gallery's); the pair statistics stream the rest
    render_report(data, out) -> Path   (HTML, no model, streamed to disk); render_html -> str
    RunFacts        what the page says as given: run facts, curves, trust, maps across training
    ReportConfig    frozen knobs: pair selection and bound, centre box, overlay size/format,
                    thumbnails, the top pairs listed beyond 30 classes, workers
    outside_centre_share(maps, centre=0.5) -> (N,) mass outside the middle box / total
    mean_maps(groups) -> (G, H, W) means of sum-normalised maps on one shared scale

The page: run summary and curves, per-class accuracy, a clickable confusion matrix that
filters the gallery (beyond 30 classes a sortable class table and the most confused pairs),
mean maps per confusion pair against correctly classified images, and every misclassified
image shown with its maps for each computed method and layer; with `RunFacts.trust`
(compare.json of `camlens.compare`), "Can these maps be trusted?": the table and sanity curves.
"""

from camlens.report.compute import (
    PairMaps,
    ReportConfig,
    ReportData,
    RunFacts,
    centre_box,
    compute_report,
    mean_maps,
    outside_centre_share,
)
from camlens.report.render import render_html, render_report

__all__ = [
    "PairMaps",
    "ReportConfig",
    "ReportData",
    "RunFacts",
    "centre_box",
    "compute_report",
    "mean_maps",
    "outside_centre_share",
    "render_html",
    "render_report",
]
