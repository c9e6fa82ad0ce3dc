"""Two checkpoints side by side on one test split: `camlens diff`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from camlens.data import DataError
from camlens.diff import diff_models, write_diff
from camlens.explain import ExplainError, check_explainable
from camlens.model import load_checkpoint
from camlens.pipeline.galleries import LAYERS, load_matching_data

__all__ = ["diff_checkpoints"]


def diff_checkpoints(
    checkpoint_a: str | Path,
    checkpoint_b: str | Path,
    source: str | Path,
    out: str | Path,
    *,
    names: tuple[str, str] | None = None,
    device: str | torch.device = "cpu",
    method: str = "gradcam",
    layers: Sequence[str] = LAYERS,
    limit: int = 24,
    cam_batch_size: int = 64,
    eval_batch_size: int = 64,
    progress: bool = True,
) -> dict[str, Path]:
    """Two checkpoints on `source`'s test split, side by side: out/diff.html and out/diff.json.

    `names` default to each checkpoint's norm ("batch norm", "layer norm") when they differ,
    else to the checkpoints as given; `limit` cards per group in the page's galleries.
    """
    if limit < 1:
        raise ExplainError(f"--limit must be >= 1, got {limit}: the cards shown per group")
    model_a, meta_a = load_checkpoint(checkpoint_a, device)
    model_b, meta_b = load_checkpoint(checkpoint_b, device)
    if list(meta_a["classes"]) != list(meta_b["classes"]):
        raise DataError(
            f"{checkpoint_a} and {checkpoint_b} were trained on different classes: "
            "compare models of the same data"
        )
    data = load_matching_data(source, meta_a, progress=progress)
    for model in (model_a, model_b):
        check_explainable(model, [method], layers)
    if names is None:
        norms = (f"{meta_a['norm']} norm", f"{meta_b['norm']} norm")
        names = norms if norms[0] != norms[1] else (str(checkpoint_a), str(checkpoint_b))
    d = diff_models(
        model_a,
        model_b,
        data.test,
        data.classes,
        names=names,
        method=method,
        layers=layers,
        limit=limit,
        batch_size=eval_batch_size,
        cam_batch_size=cam_batch_size,
    )
    return write_diff(d, out)
