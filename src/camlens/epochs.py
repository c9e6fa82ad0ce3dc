"""Maps across training: when did the model start to look there, when did the mistake appear?

    strips, files = explain_over_epochs(run, data, out, ExplainPlan(layers=["layer4"]))

A run trained with `--keep-every K` holds every K-th epoch's weights in RUN/epochs/. For the
final model's most confident mistakes, each kept epoch (and the final checkpoint) explains the
same images for the same two classes: the final prediction and the true class. A strip per
image shows, epoch by epoch, both maps (one scale per epoch and image, so a weak map looks
weak) and both classes' probabilities. Written to OUT/over-epochs.png (one figure, a row pair
per image) and OUT/over-epochs.json (the probabilities and each map's raw maximum).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from camlens.atomic import atomic_write_files
from camlens.cam.renamed import Renamed
from camlens.choices import DEFAULT_LAYERS
from camlens.classifier import ModelConfig, open_model
from camlens.data import Dataset
from camlens.evaluate import Mistakes, find_mistakes, predict
from camlens.explain import ExplainError, ExplainPlan, mistake_maps, select_mistakes
from camlens.overlay import overlay
from camlens.plots import figure_png
from camlens.train.kept import kept_epochs

__all__ = [
    "FILES",
    "EpochStrips",
    "epoch_strips",
    "explain_over_epochs",
    "kept_epochs",
    "strips_figure",
    "write_strips",
]

FILES = ("over-epochs.png", "over-epochs.json")


@dataclass(frozen=True)
class EpochStrips:
    """Per image and kept epoch: the maps and probabilities of the final pred and the truth."""

    epochs: list[int]  # (E,) the kept epochs, the final checkpoint's last
    indices: Tensor  # (M,) test split positions, the final model's most confident mistakes
    labels: Tensor  # (M,)
    preds: Tensor  # (M,) the final model's predictions
    images: Tensor  # (M, 3, H, W) uint8
    pred_maps: Tensor  # (E, M, H, W) maps of the final prediction, scaled per map pair
    label_maps: Tensor  # (E, M, H, W) maps of the true class, on the same scale as pred_maps
    pred_probs: Tensor  # (E, M) probability of the final prediction at each epoch
    label_probs: Tensor  # (E, M)
    raw_max: Tensor  # (E, M) the pair's raw maximum before scaling
    pred_cams, label_cams = Renamed(), Renamed()  # camlens 0.1's names


def explain_over_epochs(
    run: str | Path,
    data: str | Path | Dataset,
    out: str | Path,
    plan: ExplainPlan | None = None,
    *,
    device: str | torch.device = "cpu",
    strips: int = 16,
) -> tuple[EpochStrips, dict[str, Path]]:
    """Explain the final model's `strips` most confident mistakes at every kept epoch of
    `run`, with the plan's one method at its last layer (None: layer4)."""
    run, out = Path(run), Path(out)
    plan = plan or ExplainPlan()
    method, layer = (
        plan.only_method("explain --over-epochs"),
        (plan.hooked_layers or DEFAULT_LAYERS)[-1],
    )
    plan = replace(plan, methods=(method,), layers=(layer,))
    final = run / "checkpoint.safetensors"
    if not final.is_file():
        raise ExplainError(f"{run} holds no checkpoint.safetensors: name a camlens run folder")
    kept = kept_epochs(run)
    if not kept:
        raise ExplainError(
            f"{run}/epochs holds no kept weights: train with --keep-every K to keep every K-th "
            "epoch's weights"
        )
    if strips < 1:
        raise ExplainError(f"--strips must be >= 1, got {strips}: the mistakes shown")
    # the one opener: `data` (a source or a Dataset) checked against the run's classes
    opened = open_model(ModelConfig(str(final)), data, device, plan.progress)
    model, meta, data = opened.model, opened.meta, opened.data
    plan.check(model)  # the kept epochs share the final model's architecture
    logits = predict(model, data.test.images, plan.eval_batch_size).cpu()
    mistakes = find_mistakes(logits, data.test.labels)
    if len(mistakes) == 0:
        raise ExplainError("the final model makes no mistakes on this test split")
    chosen = select_mistakes(mistakes, data.classes, limit=strips)  # the most confident
    images = data.test.images[chosen.indices]
    checkpoints = [p for _, p in kept] + ([] if kept[-1][0] == meta["epoch"] else [final])
    epochs = [e for e, _ in kept] + ([] if kept[-1][0] == meta["epoch"] else [meta["epoch"]])
    models = (
        (e, open_model(ModelConfig(str(p)), data, device).model)
        for e, p in zip(epochs, checkpoints, strict=True)
    )
    shown = epoch_strips(models, replace(chosen, images=images), plan)
    return shown, write_strips(shown, data.classes, method, layer, out)


def epoch_strips(
    models: Iterable[tuple[int, nn.Module]], mistakes: Mistakes, plan: ExplainPlan
) -> EpochStrips:
    """The strips of `mistakes` (with their images; `preds` the final model's): for each
    (epoch, model) in order, the maps of the final prediction and of the truth, and both
    probabilities. The plan's one method at its last layer; the plan is trusted (checked
    once by the caller). `models` is read one at a time, so a generator that loads each
    epoch's weights holds one model at once."""
    if mistakes.images is None:
        raise ExplainError("mistakes carry no images: select them with their images")
    plan = replace(plan, methods=(plan.only_method("explain --over-epochs"),))
    plan = replace(plan, layers=(plan.hooked_layers or DEFAULT_LAYERS)[-1:])
    epochs, pred_maps, label_maps, pred_probs, label_probs, raw_max = [], [], [], [], [], []
    for epoch, model in models:
        expl = mistake_maps(model, mistakes.images, mistakes.labels, plan, preds=mistakes.preds)
        probs = expl.logits.float().softmax(1)  # (M, K)
        pred, label, _ = expl.layer_maps(0)  # one layer: (M, H, W) each, one scale per image
        epochs.append(int(epoch))
        pred_maps.append(pred)
        label_maps.append(label)
        pred_probs.append(probs.gather(1, mistakes.preds[:, None]).squeeze(1))
        label_probs.append(probs.gather(1, mistakes.labels[:, None]).squeeze(1))
        raw_max.append(torch.maximum(expl.pred_max[0], expl.label_max[0]))
    return EpochStrips(
        epochs=epochs,
        indices=mistakes.indices,
        labels=mistakes.labels,
        preds=mistakes.preds,
        images=mistakes.images,
        pred_maps=torch.stack(pred_maps),  # E x (M, H, W) -> (E, M, H, W)
        label_maps=torch.stack(label_maps),
        pred_probs=torch.stack(pred_probs),  # E x (M,) -> (E, M)
        label_probs=torch.stack(label_probs),
        raw_max=torch.stack(raw_max),
    )


def write_strips(
    strips: EpochStrips, classes: Sequence[str], method: str, layer: str, out: str | Path
) -> dict[str, Path]:
    """OUT/over-epochs.png (`strips_figure`) and OUT/over-epochs.json (the probabilities and
    each map pair's raw maximum), written atomically; their paths by file name."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {name: out / name for name in FILES}
    atomic_write_files(
        {
            files["over-epochs.png"]: figure_png(strips_figure(strips, classes, method, layer)),
            files["over-epochs.json"]: _json(strips, classes, method, layer),
        }
    )
    return files


def _json(s: EpochStrips, classes: Sequence[str], method: str, layer: str) -> bytes:
    images = [
        {
            "index": int(s.indices[i]),
            "label": classes[int(s.labels[i])],
            "pred": classes[int(s.preds[i])],
            "pred_prob": [round(float(v), 5) for v in s.pred_probs[:, i]],
            "label_prob": [round(float(v), 5) for v in s.label_probs[:, i]],
            "raw_max": [float(v) for v in s.raw_max[:, i]],
        }
        for i in range(len(s.indices))
    ]
    payload = {"method": method, "layer": layer, "epochs": s.epochs, "images": images}
    return (json.dumps(payload, indent=1) + "\n").encode()


def strips_figure(s: EpochStrips, classes: Sequence[str], method: str, layer: str) -> Figure:
    """Per image two rows (final prediction, truth): the image, then one overlay per epoch."""
    n, e = len(s.indices), len(s.epochs)
    height = 2.3 * n + 0.5
    fig = Figure(figsize=(1.1 * (e + 1) + 0.4, height))
    grid = fig.add_gridspec(
        2 * n,
        e + 1,
        hspace=0.45,
        wspace=0.06,
        top=1 - 0.55 / height,
        bottom=0.1 / height,
        left=0.02,
        right=0.98,
    )
    for i in range(n):
        rows = (
            ("pred", s.preds[i], s.pred_maps, s.pred_probs),
            ("true", s.labels[i], s.label_maps, s.label_probs),
        )
        ax = fig.add_subplot(grid[2 * i : 2 * i + 2, 0])
        ax.imshow(s.images[i].permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(
            f"#{int(s.indices[i])}\ntrue {classes[int(s.labels[i])]}\n"
            f"pred {classes[int(s.preds[i])]}",
            fontsize=6,
        )
        for r, (kind, cls, maps, probs) in enumerate(rows):
            tiles = overlay(s.images[i : i + 1].expand(e, -1, -1, -1), maps[:, i], size=64)
            for j in range(e):
                ax = fig.add_subplot(grid[2 * i + r, j + 1])
                ax.imshow(tiles[j].cpu().numpy())
                ax.set_xticks([])
                ax.set_yticks([])
                colour = "#d62728" if kind == "pred" else "#2ea043"
                ax.set_xlabel(
                    f"p({classes[int(cls)]}) {probs[j, i]:.2f}",
                    fontsize=5,
                    color=colour,
                    labelpad=1,
                )
                if i == 0 and r == 0:
                    ax.set_title(f"epoch {s.epochs[j]}", fontsize=6)
                if j == 0:
                    ax.set_ylabel(kind, fontsize=6, color=colour)
    fig.suptitle(f"{method} at {layer}, the final model's mistakes, epoch by epoch", fontsize=8)
    return fig
