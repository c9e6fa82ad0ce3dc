"""`Watch`: keep every K-th epoch's weights during any training loop, then explain the final
model's most confident mistakes with each of them (the strips of `camlens explain --over-epochs`).

During training a kept epoch costs a copy of the weights to OUT/epochs/epoch-NNN.safetensors
(fp16, as `camlens train --keep-every`), plus, with a logger, one prediction pass over the test
data and the maps of `cards` mistakes, logged as cards. All the maps across training are
computed once, in `finish`, when the final mistakes are known. Nothing of the training run
changes: see `untouched`.
"""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from PIL import Image
from torch import Tensor, nn

from camlens.atomic import atomic_write_bytes, atomic_write_files
from camlens.cam import CamConfig, create, pick_layer
from camlens.classifier import Classifier
from camlens.data import UserData, from_user_data
from camlens.epochs import FILES, EpochStrips, strips_figure
from camlens.evaluate import Mistakes, find_mistakes, predict
from camlens.explain import check_explainable, explain_mistakes
from camlens.gallery.draw import CardLayout, GalleryConfig, draw_card, draw_panels
from camlens.plots import figure_png
from camlens.watch.guard import untouched

__all__ = ["Watch", "WatchConfig", "WatchError"]

EPOCHS_DIR = "epochs"  # OUT/epochs/epoch-005.safetensors, as `camlens train --keep-every`


class WatchError(ValueError):
    """A Watch asked for something it cannot do; the message says what to change."""


@dataclass(frozen=True)
class WatchConfig:
    """What a `Watch` keeps and shows."""

    every: int = 5  # keep the weights of each epoch whose number is a multiple of this
    method: str = "gradcam"  # the CAM method of the strips and cards (camlens.METHODS)
    layer: str | None = None  # None: the last layer before the global pooling (pick_layer)
    limit: int = 16  # the final model's most confident mistakes shown in the strips
    cards: int = 4  # cards logged per kept epoch when there is a logger; 0: none
    batch_size: int = 64  # images per forward pass, predicting and explaining

    def __post_init__(self) -> None:
        for name in ("every", "limit", "batch_size"):
            if getattr(self, name) < 1:
                raise WatchError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.cards < 0:
            raise WatchError(f"cards must be 0 (none) or more, got {self.cards}")


class Watch:
    """Maps across training for any model and loop: `watch.epoch(n)` after each epoch, then
    `watch.finish()` (or use it as a context manager).

    `model` is your classifier as you train it; `test_data` anything `from_user_data` takes
    (a DataLoader, a torch Dataset, arrays, a camlens Dataset) or a `UserData`. When the test
    images carry a normalisation (read from the dataset's transform, or given to
    `from_user_data`), camlens feeds the model normalised images as it was trained, and shows
    the un-normalised ones. `classes`: the class names (or their number) where the data
    does not say them. `logger`: a TensorBoard `SummaryWriter` or a W&B run; each kept
    epoch logs `cards` cards of the model's current mistakes there, and `finish` logs the
    strips. Other settings: `WatchConfig`'s fields, by keyword.
    """

    def __init__(
        self,
        model: nn.Module,
        test_data: Any,
        out: str | Path,
        every: int = 5,
        *,
        classes: Sequence[str] | int | None = None,
        logger: Any = None,
        **settings: Any,
    ) -> None:
        self.config = WatchConfig(every=every, **settings)
        if isinstance(test_data, UserData):
            self.data = test_data
        else:
            self.data = from_user_data(
                test_data, classes=classes, batch_size=self.config.batch_size
            )
        self.out = Path(out)
        self.model = model
        self.kept: list[tuple[int, Path]] = []
        self.last_epoch: int | None = None
        self._loggers = [_image_logger(lg) for lg in ([] if logger is None else [logger])]
        with untouched(model):
            self.layer = self._choose_layer()
            check_explainable(self._wrapped(model), [self.config.method], [self.layer])

    def _wrapped(self, model: nn.Module) -> nn.Module:
        """The model as camlens calls it: [0, 1] images in, normalised on the way."""
        if self.data.mean is None:
            return model
        device = next(model.parameters()).device
        return Classifier(model, self.data.mean, self.data.std).to(device)  # mean/std too

    def _choose_layer(self) -> str:
        wrapped = self._wrapped(self.model)
        names = dict(wrapped.named_modules())
        layer = self.config.layer
        if layer is None:
            size = int(next(iter(self.data))[0].shape[-1])
            try:
                return pick_layer(wrapped, size).name
            except ValueError as e:
                raise WatchError(str(e).replace("--layer", "layer=")) from None
        if layer not in names and f"model.{layer}" in names:  # the model's own name
            return f"model.{layer}"
        return layer

    def epoch(self, epoch: int) -> None:
        """Call after epoch `epoch` (any numbering); keeps the weights when `every` divides it."""
        self.last_epoch = int(epoch)
        if epoch % self.config.every:
            return
        with untouched(self.model):
            path = self.out / EPOCHS_DIR / f"epoch-{epoch:03d}.safetensors"
            state = {
                k: (v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.cpu())
                .contiguous()
                .clone()  # tied weights become two tensors: safetensors refuses shared ones
                for k, v in self.model.state_dict().items()
            }
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, safetensors.torch.save(state))
            self.kept = [(e, p) for e, p in self.kept if e != epoch] + [(int(epoch), path)]
            if self._loggers and self.config.cards:
                self._log_cards(epoch)

    def finish(self) -> dict[str, Path]:
        """Explain the final model's most confident mistakes with every kept epoch's weights
        (and the final ones); write OUT/over-epochs.png and .json. Returns their paths."""
        if self.last_epoch is None:
            raise WatchError("no epoch was watched: call watch.epoch(n) after each epoch")
        with untouched(self.model):
            strips = self._strips()
            classes, method, layer = self.data.classes, self.config.method, self.layer
            png = figure_png(strips_figure(strips, classes, method, layer))
            files = {name: self.out / name for name in FILES}
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_files(
                {
                    files["over-epochs.png"]: png,
                    files["over-epochs.json"]: strips_json(strips, classes, method, layer),
                }
            )
            picture = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
            for log in self._loggers:
                log("camlens/over-epochs", picture, self.last_epoch)
        return files

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, kind: Any, *rest: Any) -> None:
        if kind is None and self.last_epoch is not None:
            self.finish()

    def _predict(self, model: nn.Module) -> tuple[Tensor, Tensor]:
        """logits (N, K) and labels (N,) of the whole test data, streamed batch by batch."""
        logits, labels = [], []
        for images, y in self.data:
            logits.append(predict(model, images, self.config.batch_size))
            labels.append(y)
        return torch.cat(logits), torch.cat(labels)

    def _images(self, indices: Tensor) -> Tensor:
        """uint8 (M, 3, H, W) of the test images at `indices`, in that order: one more pass."""
        wanted = {int(i): row for row, i in enumerate(indices.tolist())}
        found: list[Tensor | None] = [None] * len(wanted)
        start = 0
        for images, _ in self.data:
            for i in range(images.shape[0]):
                if start + i in wanted:
                    found[wanted[start + i]] = images[i].mul(255).round().to(torch.uint8)
            start += images.shape[0]
        return torch.stack(found)  # type: ignore[arg-type]

    def _mistakes(self, model: nn.Module, limit: int) -> Mistakes:
        logits, labels = self._predict(model)
        mistakes = find_mistakes(logits, labels)
        chosen = mistakes.select(torch.arange(min(limit, len(mistakes))))
        images = self._images(chosen.indices) if len(chosen) else None
        return Mistakes(
            chosen.indices, chosen.labels, chosen.preds, chosen.probs, chosen.margins, images
        )

    def _strips(self) -> EpochStrips:
        final = self._wrapped(self.model)
        chosen = self._mistakes(final, self.config.limit)
        if len(chosen) == 0:
            raise WatchError("the final model makes no mistakes on the test data: nothing to show")
        device = next(self.model.parameters()).device
        x = chosen.images.float().div(255).to(device)  # (M, 3, H, W) in [0, 1]
        labels, preds = chosen.labels.to(device), chosen.preds.to(device)
        kept = dict(self.kept)
        epochs = [e for e, _ in self.kept]
        if not epochs or epochs[-1] != self.last_epoch:
            epochs.append(self.last_epoch)  # the final weights, not kept at this epoch
        snapshot = copy.deepcopy(self.model) if kept else None  # one copy, reloaded per epoch
        pred_cams, label_cams, pred_probs, label_probs, raw_max = [], [], [], [], []
        config = CamConfig(batch_size=self.config.batch_size, normalize="pair")
        for e in epochs:
            model = final
            if e in kept and e != self.last_epoch:  # the final epoch: the live weights
                snapshot.load_state_dict(safetensors.torch.load(kept[e].read_bytes()))
                model = self._wrapped(snapshot)
            with create(self.config.method, model, self.layer, config) as engine:
                pair = engine.explain_pair(x, labels, preds=preds)
            probs = pair.pred.logits.float().softmax(1).cpu()  # (M, K)
            pred_cams.append(pair.pred.cams.cpu())
            label_cams.append(pair.label.cams.cpu())
            pred_probs.append(probs.gather(1, chosen.preds[:, None]).squeeze(1))
            label_probs.append(probs.gather(1, chosen.labels[:, None]).squeeze(1))
            raw_max.append(torch.maximum(pair.pred.raw_max[0], pair.label.raw_max[0]).cpu())
        return EpochStrips(
            epochs=epochs,
            indices=chosen.indices,
            labels=chosen.labels,
            preds=chosen.preds,
            images=chosen.images,
            pred_cams=torch.stack(pred_cams),
            label_cams=torch.stack(label_cams),
            pred_probs=torch.stack(pred_probs),
            label_probs=torch.stack(label_probs),
            raw_max=torch.stack(raw_max),
        )

    def _log_cards(self, epoch: int) -> None:
        """The current model's `cards` most confident mistakes, as gallery cards, one image."""
        model = self._wrapped(self.model)
        chosen = self._mistakes(model, self.config.cards)
        if len(chosen) == 0:
            return
        expl = explain_mistakes(
            model,
            chosen.images,
            chosen.labels,
            self.config.method,
            [self.layer],
            self.config.batch_size,
            preds=chosen.preds,
        )
        config = GalleryConfig(size=96)
        panels = draw_panels(expl, chosen.images, config)
        layout = CardLayout.of(expl, self.data.classes, config)
        cards = [
            draw_card(i, chosen, expl, panels, self.data.classes, layout)
            for i in range(len(chosen))
        ]
        picture = np.concatenate(cards, axis=0)  # (H * cards, W, 3) uint8
        for log in self._loggers:
            log("camlens/cards", picture, epoch)


def strips_json(s: EpochStrips, classes: Sequence[str], method: str, layer: str) -> bytes:
    """over-epochs.json as `camlens explain --over-epochs` writes it."""
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


def _image_logger(logger: Any):
    """`log(tag, picture (H, W, 3) uint8, epoch)` for a SummaryWriter or a W&B run."""
    if hasattr(logger, "add_image"):  # torch.utils.tensorboard.SummaryWriter, tensorboardX

        def log_tb(tag: str, picture: np.ndarray, epoch: int) -> None:
            logger.add_image(tag, picture, epoch, dataformats="HWC")
            logger.flush()

        return log_tb
    if type(logger).__module__.startswith("wandb") and hasattr(logger, "log"):

        def log_wandb(tag: str, picture: np.ndarray, epoch: int) -> None:
            import wandb

            logger.log({tag: wandb.Image(picture), "epoch": epoch})

        return log_wandb
    raise WatchError(
        f"logger is a {type(logger).__name__}: pass a TensorBoard SummaryWriter or a W&B run "
        "(wandb.init(...)), or none"
    )
