"""Two checkpoints side by side on one test split: `camlens diff`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from camlens.classifier import ModelConfig, open_model
from camlens.data import DataError
from camlens.diff import diff_models, write_diff
from camlens.explain import ExplainPlan
from camlens.pipeline.galleries import LAYERS

__all__ = ["diff_checkpoints"]


def diff_checkpoints(
    checkpoint_a: str | Path,
    checkpoint_b: str | Path,
    source: str | Path,
    out: str | Path,
    plan: ExplainPlan | None = None,
    *,
    names: tuple[str, str] | None = None,
    device: str | torch.device = "cpu",
    cards: int = 24,
) -> dict[str, Path]:
    """Two checkpoints on `source`'s test split, side by side: out/diff.html and out/diff.json.

    `plan`: its one method, its layers (None: layer3 and layer4). `cards`: per group in the
    page's galleries. `names` default to each checkpoint's norm ("batch norm",
    "layer norm") when they differ, else to the checkpoints as given.
    """
    plan = plan or ExplainPlan(progress=True)
    plan = replace(plan, layers=plan.layers or LAYERS)
    a = open_model(ModelConfig(str(checkpoint_a)), source, device, plan.progress)
    try:  # the data a was opened with, checked against b's classes
        b = open_model(ModelConfig(str(checkpoint_b)), a.data, device)
    except DataError:
        raise DataError(
            f"{checkpoint_a} and {checkpoint_b} were trained on different classes: "
            "compare models of the same data"
        ) from None
    (model_a, meta_a), (model_b, meta_b), data = (a.model, a.meta), (b.model, b.meta), a.data
    for model in (model_a, model_b):  # two models: the plan is checked against each once
        plan.check(model)
    if names is None:
        norms = (f"{meta_a['norm']} norm", f"{meta_b['norm']} norm")
        names = norms if norms[0] != norms[1] else (str(checkpoint_a), str(checkpoint_b))
    d = diff_models(model_a, model_b, data, plan=plan, names=names, cards=cards)
    return write_diff(d, out)
