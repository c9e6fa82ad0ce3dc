"""`Watch`: keep every K-th epoch's weights during any training loop, then explain the final
model's most confident mistakes with each of them (the strips of `camlens explain --over-epochs`).

During training a kept epoch costs a copy of the weights to OUT/epochs/epoch-NNN.safetensors
(fp16, as `camlens train --keep-every`), plus, with a logger, one prediction pass over the test
data and the maps of `cards` mistakes, logged as cards. All the maps across training are
computed once, in `finish`, when the final mistakes are known, by `camlens.epochs` (the same
strips and files as `explain --over-epochs`) through `camlens.explain`. Nothing of the
training run changes: see `untouched`.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from PIL import Image
from torch import Tensor, nn

from camlens.atomic import atomic_write_bytes
from camlens.cam import pick_layer
from camlens.classifier import Classifier, own_layer_names
from camlens.data import UserData, from_user_data
from camlens.epochs import EpochStrips, epoch_strips, write_strips
from camlens.evaluate import Mistakes, find_mistakes, predict
from camlens.explain import ExplainError, ExplainPlan, mistake_maps, select_mistakes
from camlens.gallery.draw import CardLayout, draw_card, draw_panels
from camlens.outputs import GalleryConfig
from camlens.train.kept import epoch_stem
from camlens.watch.guard import untouched

__all__ = ["Watch", "WatchConfig", "WatchError"]


class WatchError(ValueError):
    """A Watch asked for something it cannot do; the message says what to change."""


OLD_SETTINGS = ("method", "layer", "batch_size", "limit")  # camlens 0.1's: WatchConfig.of


@dataclass(frozen=True)
class WatchConfig:
    """What a `Watch` keeps and shows. Its maps are made as every job's are, by a `plan`: its
    one method, its layer (None: the last before the global pooling; of several, the last, as
    `explain --over-epochs`), its batch sizes and precision."""

    every: int = 5  # keep the weights of each epoch whose number is a multiple of this
    strips: int = 16  # the final model's most confident mistakes shown, one strip each
    cards: int = 4  # cards logged per kept epoch when there is a logger; 0: none
    plan: ExplainPlan = field(default_factory=ExplainPlan)

    def __post_init__(self) -> None:
        for name in ("every", "strips"):
            if getattr(self, name) < 1:
                raise WatchError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.cards < 0:
            raise WatchError(f"cards must be 0 (none) or more, got {self.cards}")
        try:
            self.plan.only_method("a Watch")
        except ExplainError as e:
            raise WatchError(str(e)) from None

    @classmethod
    def of(cls, every: int = 5, **settings: Any) -> WatchConfig:
        """The config of `Watch(..., every, **settings)`. camlens 0.1's settings that were the
        plan's fields under other names (method, layer, batch_size) and `limit` (the strips)
        still work, with a DeprecationWarning."""
        old = {k: settings.pop(k) for k in OLD_SETTINGS if k in settings}
        if old:
            warnings.warn(
                f"Watch's {', '.join(f'{k}=' for k in old)} (camlens 0.1) go in 0.3: limit is "
                "now strips=, and method, layer and batch_size are the plan's fields: plan="
                "ExplainPlan(methods=..., layers=..., cam_batch_size=..., eval_batch_size=...)",
                DeprecationWarning,
                stacklevel=3,
            )
            plan = settings.get("plan", ExplainPlan())
            if "method" in old:
                plan = replace(plan, methods=(old["method"],))
            if old.get("layer") is not None:
                plan = replace(plan, layers=(old["layer"],))
            if "batch_size" in old:
                batch = old["batch_size"]
                plan = replace(plan, cam_batch_size=batch, eval_batch_size=batch)
            settings["plan"] = plan
            if "limit" in old:
                settings.setdefault("strips", old["limit"])
        return cls(every=every, **settings)


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
        self.config = WatchConfig.of(every, **settings)
        if isinstance(test_data, UserData):
            self.data = test_data
        else:
            self.data = from_user_data(
                test_data, classes=classes, batch_size=self.config.plan.eval_batch_size
            )
        self.out = Path(out)
        self.model = model
        self.kept: list[tuple[int, Path]] = []
        self.last_epoch: int | None = None
        self._loggers = [_image_logger(lg) for lg in ([] if logger is None else [logger])]
        with untouched(model):
            self.layer = self._choose_layer()
            # the strips' and cards' maps come from camlens.explain with this plan, checked once
            self.plan = replace(self.config.plan, layers=(self.layer,)).check(self._wrapped(model))

    def _wrapped(self, model: nn.Module) -> nn.Module:
        """The model as camlens calls it: [0, 1] images in, normalised on the way."""
        if self.data.mean is None:
            return model
        device = next(model.parameters()).device
        return Classifier(model, self.data.mean, self.data.std).to(device)  # mean/std too

    def _choose_layer(self) -> str:
        wrapped = self._wrapped(self.model)
        if not self.config.plan.hooked_layers:
            size = int(next(iter(self.data))[0].shape[-1])
            try:
                return pick_layer(wrapped, size).name
            except ValueError as e:
                raise WatchError(str(e).replace("--layer", "layer=")) from None
        last = self.config.plan.hooked_layers[-1]
        return own_layer_names(wrapped, [last])[0]  # the model's own name too

    def epoch(self, epoch: int) -> None:
        """Call after epoch `epoch` (any numbering); keeps the weights when `every` divides it."""
        self.last_epoch = int(epoch)
        if epoch % self.config.every:
            return
        with untouched(self.model):
            path = epoch_stem(self.out, epoch).with_suffix(".safetensors")
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
            files = write_strips(
                strips, self.data.classes, self.plan.methods[0], self.layer, self.out
            )
            if self._loggers:
                png = files["over-epochs.png"].read_bytes()
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
        """logits (N, K) and labels (N,) of the whole test data, streamed batch by batch, on the
        CPU whatever device the loader keeps its batches on (a fast CIFAR loop's GPU)."""
        logits, labels = [], []
        for images, y in self.data:
            logits.append(predict(model, images, self.plan.eval_batch_size).cpu())
            labels.append(y.cpu())
        return torch.cat(logits), torch.cat(labels)

    def _images(self, indices: Tensor) -> Tensor:
        """uint8 (M, 3, H, W) of the test images at `indices`, in that order: one more pass.
        On the CPU, as every Mistakes' images: the strips draw them next to CPU maps."""
        wanted = {int(i): row for row, i in enumerate(indices.tolist())}
        found: list[Tensor | None] = [None] * len(wanted)
        start = 0
        for images, _ in self.data:
            for i in range(images.shape[0]):
                if start + i in wanted:
                    found[wanted[start + i]] = images[i].cpu().mul(255).round().to(torch.uint8)
            start += images.shape[0]
        return torch.stack(found)  # type: ignore[arg-type]

    def _mistakes(self, model: nn.Module, limit: int) -> Mistakes:
        logits, labels = self._predict(model)
        mistakes = find_mistakes(logits, labels)
        chosen = select_mistakes(mistakes, (), limit=limit)  # the most confident
        return replace(chosen, images=self._images(chosen.indices) if len(chosen) else None)

    def _strips(self) -> EpochStrips:
        """The final model's mistakes explained by each kept epoch's weights, then the final."""
        chosen = self._mistakes(self._wrapped(self.model), self.config.strips)
        if len(chosen) == 0:
            raise WatchError("the final model makes no mistakes on the test data: nothing to show")
        return epoch_strips(self._epoch_models(), chosen, self.plan)

    def _epoch_models(self) -> Iterator[tuple[int, nn.Module]]:
        """(epoch, model as camlens calls it) for each kept epoch, then the live final weights;
        one copy of the model, reloaded per epoch, so that one model is held at a time."""
        snapshot = copy.deepcopy(self.model) if self.kept else None
        for epoch, path in self.kept:
            if epoch != self.last_epoch:  # the final epoch: the live weights, below
                snapshot.load_state_dict(safetensors.torch.load(path.read_bytes()))
                yield epoch, self._wrapped(snapshot)
        yield self.last_epoch, self._wrapped(self.model)

    def _log_cards(self, epoch: int) -> None:
        """The current model's `cards` most confident mistakes, as gallery cards, one image."""
        model = self._wrapped(self.model)
        chosen = self._mistakes(model, self.config.cards)
        if len(chosen) == 0:
            return
        expl = mistake_maps(model, chosen.images, chosen.labels, self.plan, preds=chosen.preds)
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
