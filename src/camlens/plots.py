"""Matplotlib figures written as PNG: training curves and the confusion matrix.

Figures are plain `Figure` objects, not pyplot's: no display backend, no global figure list to
leak from in long runs. PNGs are written atomically, so a run killed mid-save never
leaves a truncated PNG behind.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib.figure import Figure

from camlens.atomic import atomic_write_bytes

__all__ = ["plot_curves", "plot_confusion", "figure_png"]


def figure_png(fig, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def plot_curves(history: Sequence[dict], path: str | Path | None = None) -> bytes:
    """Loss and accuracy per epoch, train against test (the seed's four curves in two panels)."""
    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 3.6))
    ax_loss, ax_acc = fig.subplots(1, 2)
    for split, style in (("train", "-o"), ("test", "-s")):
        ax_loss.plot(epochs, [h[f"{split}_loss"] for h in history], style, ms=3, label=split)
        ax_acc.plot(epochs, [100 * h[f"{split}_acc"] for h in history], style, ms=3, label=split)
    ax_loss.set(title="loss", xlabel="epoch")
    ax_acc.set(title="accuracy (%)", xlabel="epoch")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    png = figure_png(fig)
    if path is not None:
        atomic_write_bytes(Path(path), png)
    return png


def plot_confusion(
    confusion: torch.Tensor, classes: Sequence[str], path: str | Path | None = None
) -> bytes:
    """Row-normalised confusion matrix (rows: true class) with the counts written in the cells."""
    counts = confusion.double()
    rates = counts / counts.sum(dim=1, keepdim=True).clamp_min(1)
    k = len(classes)
    fig = Figure(figsize=(1.0 + 0.62 * k, 0.8 + 0.55 * k))
    ax = fig.subplots()
    ax.imshow(rates.cpu().numpy(), cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            colour = "white" if rates[i, j] > 0.5 else "black"
            ax.text(
                j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=7, color=colour
            )
    ax.set_xticks(range(k), classes, rotation=45, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set(xlabel="predicted", ylabel="true", title="confusion (row-normalised colour, counts)")
    png = figure_png(fig)
    if path is not None:
        atomic_write_bytes(Path(path), png)
    return png
