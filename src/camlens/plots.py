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
import torch.nn.functional as F
from matplotlib.figure import Figure

from camlens.atomic import atomic_write_bytes

__all__ = ["plot_curves", "plot_confusion", "figure_png", "top_confusions"]


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


CELL_NUMBERS_UP_TO = 30  # classes: beyond this a K x K grid of numbers is unreadable (and huge)
TOP_PAIRS = 30  # confused pairs in the figure beside the heat map of a large K
HEAT_PIXELS = 500  # the heat map's cells a side at most: about its pixels in the figure


def top_confusions(confusion: torch.Tensor, n: int) -> list[tuple[int, int, int]]:
    """The `n` largest off-diagonal counts as (true, predicted, count), largest first, ties by
    position; zero counts are left out. One sort of the K x K counts, no loop over cells."""
    off = confusion.long().clone()
    off.fill_diagonal_(0)
    flat = off.flatten().argsort(descending=True, stable=True)[:n]  # (K*K,) -> (n,)
    k = off.shape[1]
    counts = off.flatten()[flat]
    return [(f // k, f % k, c) for c, f in zip(counts.tolist(), flat.tolist(), strict=True) if c]


def plot_confusion(
    confusion: torch.Tensor, classes: Sequence[str], path: str | Path | None = None
) -> bytes:
    """Row-normalised confusion matrix (rows: true class) with the counts written in the cells;
    beyond `CELL_NUMBERS_UP_TO` classes a heat map with no text beside a bar chart of the
    `TOP_PAIRS` most confused pairs, in a figure whose size does not grow with K."""
    counts = confusion.double()
    rates = counts / counts.sum(dim=1, keepdim=True).clamp_min(1)
    k = len(classes)
    if k > CELL_NUMBERS_UP_TO:
        png = _plot_large_confusion(confusion, rates, classes)
    else:
        png = _plot_small_confusion(counts, rates, classes)
    if path is not None:
        atomic_write_bytes(Path(path), png)
    return png


def _plot_small_confusion(counts: torch.Tensor, rates: torch.Tensor, classes) -> bytes:
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
    return figure_png(fig)


def _plot_large_confusion(confusion: torch.Tensor, rates: torch.Tensor, classes) -> bytes:
    k = len(classes)
    fig = Figure(figsize=(15, 7.5))
    ax, bars = fig.subplots(1, 2, width_ratios=(1, 1.1))
    # a square root brings the few-percent confusions out of the white beside the diagonal;
    # blocks of cells pooled by their maximum to at most HEAT_PIXELS a side, so that no
    # confusion falls between the figure's pixels: (K, K) -> (<= HEAT_PIXELS, <= HEAT_PIXELS)
    block = -(-k // HEAT_PIXELS)
    heat = F.max_pool2d(rates.float()[None, None], block, block, ceil_mode=True)[0, 0]
    ax.imshow(
        heat.sqrt().cpu().numpy(),
        cmap="Blues",
        vmin=0,
        vmax=1,
        interpolation="nearest",
        extent=(0, k, k, 0),
    )
    ax.set(
        xlabel="predicted class index",
        ylabel="true class index",
        title=f"confusion of {k} classes (colour: sqrt of the row share"
        + (f", max of {block}x{block} cells)" if block > 1 else ")"),
    )
    top = top_confusions(confusion, TOP_PAIRS)
    names = [f"{classes[t][:24]} -> {classes[p][:24]}" for t, p, _ in top]
    bars.barh(range(len(top)), [c for _, _, c in top], color="#d62728")
    bars.set_yticks(range(len(top)), names, fontsize=7)
    bars.invert_yaxis()  # the most confused on top
    bars.set(xlabel="images", title=f"the {len(top)} most confused pairs (true -> predicted)")
    return figure_png(fig)
