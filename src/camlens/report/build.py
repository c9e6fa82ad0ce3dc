"""`build_report`: compute what the report needs, then render it; the two halves stay apart."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import nn

from camlens.data import Split
from camlens.evaluate import Evaluation
from camlens.report.compute import ReportConfig, compute_report
from camlens.report.render import render_report

__all__ = ["build_report"]


def build_report(
    model: nn.Module,
    split: Split,
    classes: Sequence[str],
    out: str | Path,
    *,
    run_info: dict,
    history: list[dict] | None = None,
    methods: Sequence[str] = ("gradcam",),
    layers: Sequence[str] = ("layer3", "layer4"),
    batch_size: int = 64,
    evaluation: Evaluation | None = None,
    tta: bool = False,
    limit: int | None = None,
    config: ReportConfig | None = None,
    precision: str = "fp32",
) -> Path:
    """Write `out`/report.html for `model` on `split` and return its path.

    `evaluation` saves a pass when the caller already has one (it must come from this model on
    this split); `limit` keeps the most confident mistakes in the gallery (pair statistics
    always use all of them). `run_info` is shown as given; its "data_label" names the data.
    `precision`: "bf16" autocasts the CAM forward passes (maps stay fp32).
    """
    data = compute_report(
        model,
        split,
        classes,
        run_info=run_info,
        history=history,
        methods=methods,
        layers=layers,
        batch_size=batch_size,
        evaluation=evaluation,
        tta=tta,
        limit=limit,
        config=config,
        precision=precision,
    )
    return render_report(data, out)
