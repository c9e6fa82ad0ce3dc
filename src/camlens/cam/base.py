"""The shared machinery of every CAM method: the engine and the one-forward base.

A method only decides how the hooked layer's `acts` (and `grads`) become a low-resolution map;
everything else lives here and in the modules beside it, once:

- `Engine` resolves `layer=` (dotted names or modules), checks `images`, splits big inputs into
  chunks, runs the model in eval mode (restoring each module's own train/eval flag afterwards),
  upsamples maps to the input size (bilinear), normalises them and builds a `CamResult`.
- `BaseCAM(Engine)` is the base of the one-forward methods (Grad-CAM and friends, Eigen-CAM,
  CAM): one forward pass with the layers hooked, then, for gradient methods, one partial
  backward per target set with `torch.autograd.grad` w.r.t. the hooked activations only (no
  parameter `.grad` is written, parameters' `requires_grad` is left alone).

How to add a method: the hooks a subclass may override, smallest first. Set `name` (its METHODS
key), `linear`, `rectify`, `needs_grads`/`needs_indices` as they apply; a method with knobs of its
own defines a `Knobs` dataclass whose `method` is its name (config.py) and reads `self.knobs`.
    _map(acts, grads, target)        BaseCAM: (N, C, h, w) -> (N, h, w). Most methods (Grad-CAM
                                     and friends, Eigen-CAM, CAM, KPCA-CAM, ShapleyCAM)
    _inputs(images)                  BaseCAM: what the one forward pass sees (SmoothGrad-CAM++)
    _maps_from(logits, store, specs) BaseCAM: the forward's outputs -> RawMaps (SmoothGrad-CAM++)
    _resolve(spec, logits, scores)   what a target means (Finer-CAM: the class minus its nearest)
    _input_maps(...)                 InputCAM (pixel.py): maps at the image's size (FullGrad,
                                     Guided Grad-CAM)
    _raw_chunk(images, specs)        Engine: a chunk -> RawMaps, for extra forward passes
                                     (Score-CAM family in score.py, Ablation-CAM)
    _finish(chunks, size, mode)      Engine: the chunks -> CamResults (RefineCAM's product)
The smallest method, the one to copy:

    class MeanActCAM(BaseCAM):  # each place's mean activation over channels
        name = "meanactcam"
        needs_grads = False
        def _map(self, acts, grads, target):
            return acts.mean(1)  # (N, C, h, w) -> (N, h, w)

and a line in METHODS (cam/__init__.py) makes it `create("meanactcam", ...)`; one in
camlens/choices.py METHOD_NAMES a --method choice (tests/test_imports.py keeps the two in step).

The steps they share, in the order a call uses them:
    layers.py     find_layer, resolve_layers, eval_mode, capture (hooks), upsample
    normalize.py  NORMALIZE, normalize_maps ("minmax", "none", "batch", "pair"; signed maps)
    config.py     CamConfig
    targets.py    Target, TargetSpec, Resolved: what a map explains, checked and resolved
    results.py    RawMaps (per chunk), CamResult, PairResult, assemble_results
The names of those modules listed in `__all__` are re-exported here, where they used to live.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import fields, replace
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from camlens.cam.config import KNOBS, PRECISIONS, CamConfig
from camlens.cam.layers import capture, eval_mode, find_layer, resolve_layers, upsample
from camlens.cam.layout import logits_of
from camlens.cam.normalize import NORMALIZE, normalize_maps
from camlens.cam.precision import check_precision, full_fp32
from camlens.cam.results import CamResult, PairResult, RawMaps, assemble_results
from camlens.cam.targets import (
    Resolved,
    Target,
    TargetSpec,
    prepare_target,
    resolve_target,
    slice_spec,
)

__all__ = [
    "NORMALIZE",
    "PRECISIONS",
    "BaseCAM",
    "CamConfig",
    "CamResult",
    "Target",
    "Engine",
    "PairResult",
    "RawMaps",
    "Resolved",
    "capture",
    "eval_mode",
    "find_layer",
    "normalize_maps",
    "resolve_layers",
    "upsample",
]


E = TypeVar("E", bound="Engine")


class Engine:
    """Everything but how maps are made: layers, config, chunks, eval mode, normalisation.

    Subclasses implement `_raw_chunk(images, specs) -> RawMaps` and set `name`, `linear`
    (whether the map is linear in the target score, which contrast targets need) and `rectify`.
    """

    name = "engine"
    linear = False  # map linear in the target score: contrast targets allowed
    rectify = True  # ReLU the raw map (unsigned targets only)
    needs_indices = False  # a method without gradients that reads the class (CAM, Score-CAM)

    def __init__(
        self,
        model: nn.Module,
        layer: str | nn.Module | Sequence[str | nn.Module],
        config: CamConfig | None = None,
        **overrides: Any,
    ) -> None:
        self.model = model
        self.layers = resolve_layers(model, layer)
        # `overrides`: CamConfig's fields, or the method's own knobs by name (top_k=8)
        shared = {k: v for k, v in overrides.items() if k in CamConfig.__dataclass_fields__}
        self.config = replace(config or CamConfig(), **shared)
        # the method's own knobs (camlens.cam.config.KNOBS): another method's are refused
        own, given = KNOBS.get(self.name), self.config.knobs
        if given is not None and type(given) is not own:
            reads = f"reads {own.__name__}" if own else "has no knobs of its own"
            raise ValueError(
                f"{self.name} {reads}, not {type(given).__name__} ({given.method}'s knobs)"
            )
        mine = {k: v for k, v in overrides.items() if k not in shared}
        names = [f.name for f in fields(own)] if own else []
        unknown = [k for k in mine if k not in names]
        if unknown:
            reads = ", ".join(names) or "none of its own"
            raise ValueError(f"{self.name} reads no knob {unknown[0]!r}: its knobs are {reads}")
        knobs = given if given is not None or own is None else own()
        self.knobs = replace(knobs, **mine) if mine else knobs
        check_precision(self.config.precision)  # fp16: refused in one line (cam/precision.py)
        self.closed = False

    def __enter__(self: E) -> E:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing stays hooked between calls; this only marks the engine as done."""
        self.closed = True

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layers={list(self.layers)}, config={self.config})"

    def __call__(self, images: Tensor, targets: TargetSpec = None) -> Tensor:
        """(N, 3, H, W) images -> (N, H, W) maps in [0, 1] ([-1, 1] for a contrast target)."""
        return self.explain(images, targets).maps

    def explain(
        self, images: Tensor, targets: TargetSpec = None, normalize: str | None = None
    ) -> CamResult:
        """Maps of one target set, with logits, raw maps and layer details."""
        return self.explain_many(images, [targets], normalize)[0]

    @full_fp32()  # TF32 off for the maps, the caller's flags restored (cam/precision.py)
    def explain_many(
        self, images: Tensor, target_sets: Sequence[TargetSpec], normalize: str | None = None
    ) -> list[CamResult]:
        """One result per target set, all from the same forward pass(es) of `images`."""
        if self.closed:
            raise RuntimeError(f"{type(self).__name__} is closed")
        mode = normalize or self.config.normalize
        if mode not in NORMALIZE:
            raise ValueError(f"unknown normalize {mode!r}: choose one of {', '.join(NORMALIZE)}")
        self._check_images(images)
        n, device = images.shape[0], images.device
        specs = [self._prepare(spec, n, device) for spec in target_sets]
        if not specs:
            raise ValueError("target_sets is empty")
        step = self.config.batch_size or n
        chunks: list[RawMaps] = []
        with eval_mode(self.model):
            for start in range(0, n, step):
                part = [slice_spec(s, start, start + step) for s in specs]
                chunks.append(self._raw_chunk(images[start : start + step], part))
        with _no_autocast(device):
            return self._finish(chunks, tuple(images.shape[-2:]), mode)

    def explain_pair(
        self,
        images: Tensor,
        labels: TargetSpec,
        normalize: str | None = None,
        preds: TargetSpec = None,
    ) -> PairResult:
        """Predicted-class, label-class and (linear methods) contrast maps in one forward pass.

        `preds` None explains the arg-max; pass the predictions a report states (e.g. from
        flip TTA) so that the maps explain those classes.
        """
        if self.linear:
            sets: list[TargetSpec] = [preds, labels, Target(preds, versus=labels)]
        else:
            sets = [preds, labels]
        results = self.explain_many(images, sets, normalize)
        return PairResult(results[0], results[1], results[2] if self.linear else None)

    # -- the part a method supplies ------------------------------------------------------------

    def _raw_chunk(self, images: Tensor, specs: list[Any]) -> RawMaps:
        raise NotImplementedError

    # -- shared steps --------------------------------------------------------------------------

    def _check_images(self, images: Tensor) -> None:
        if not isinstance(images, Tensor) or images.ndim != 4:
            got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be a (N, C, H, W) tensor, got {got}")
        if not images.is_floating_point():
            raise TypeError(f"images must be float in [0, 1], got dtype {images.dtype}")
        if images.shape[0] == 0:
            raise ValueError("images is an empty batch")

    def _prepare(self, spec: TargetSpec, n: int, device: torch.device) -> Any:
        """Check counts before any forward pass; indices become (n,) long tensors on `device`."""
        return prepare_target(
            spec, n, device, linear=self.linear, method=self.name, needs_indices=self.needs_indices
        )

    def _resolve(self, spec: Any, logits: Tensor, want_scores: bool) -> Resolved:
        """Turn a prepared spec into class indices (and scores) given this chunk's logits."""
        return resolve_target(
            spec, logits, want_scores, needs_indices=self.needs_indices, method=self.name
        )

    def _finish(self, chunks: list[RawMaps], size: tuple[int, int], mode: str) -> list[CamResult]:
        return assemble_results(
            chunks, tuple(self.layers), size, mode, rectify=self.rectify, method=self.name
        )

    def _clean_forward(
        self, images: Tensor, specs: list[Any], readings: dict | None = None
    ) -> tuple[Tensor, dict[str, Tensor], list[Resolved]]:
        """One no-grad forward of the clean images for the forward-only methods: the logits,
        each hooked layer's output by name, and the chunk's resolved targets (`readings`:
        filled as `capture` fills it)."""
        with (
            torch.no_grad(),
            capture(self.model, self.layers, False, self.config.layout, readings) as store,
            self._forward_context(images.device),
        ):
            logits = logits_of(self.model(images))
        missing = [name for name in self.layers if name not in store]
        if missing:
            raise RuntimeError(f"layers {missing} were not called in the model's forward pass")
        return logits, store, [self._resolve(spec, logits, want_scores=False) for spec in specs]

    def _forward_context(self, device: torch.device) -> contextlib.AbstractContextManager:
        dtype = PRECISIONS[self.config.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=dtype)


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    return torch.autocast(device_type=device.type, enabled=False)


class BaseCAM(Engine):
    """Base of the one-forward methods: a subclass overrides `_map` (other hooks: see above).

    Gradient methods (`needs_grads = True`) get `grads` = d(sum of target scores)/d(acts) from
    one `torch.autograd.grad` per target set on the one forward pass; activation-only methods
    get `grads=None` and run the forward under `torch.no_grad()`.
    """

    needs_grads = True

    def _map(self, acts: Tensor, grads: Tensor | None, target: Resolved) -> Tensor:
        """(N, C, h, w) float32 acts and grads -> (N, h, w) raw map, before any ReLU."""
        raise NotImplementedError

    def _check_images(self, images: Tensor) -> None:
        super()._check_images(images)
        if not self.needs_grads:
            return
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                f"{self.name} needs autograd, which torch.inference_mode() turns off: call it "
                "outside inference mode (torch.no_grad() is fine)"
            )
        if images.is_inference():
            raise RuntimeError(
                f"{self.name} got inference-mode tensors (made under torch.inference_mode()), "
                "which autograd cannot use: pass images.clone() made outside inference mode"
            )
        if any(p.is_inference() for p in self.model.parameters()):
            raise RuntimeError(
                "the model's parameters are inference-mode tensors: build or load the model "
                "outside torch.inference_mode()"
            )

    def _raw_chunk(self, images: Tensor, specs: list[Any]) -> RawMaps:
        # no_grad: recording starts at the first hooked layer (see capture) and this restores
        # the caller's grad mode afterwards, also inside the caller's torch.no_grad().
        with (
            torch.no_grad(),
            capture(self.model, self.layers, self.needs_grads, self.config.layout) as store,
            self._forward_context(images.device),
        ):
            logits = logits_of(self.model(self._inputs(images)))
        # the targets and their backward need grad mode, also inside a caller's no_grad();
        # maps are combined in float32, also inside a caller's autocast
        with torch.enable_grad(), _no_autocast(images.device):
            return self._maps_from(logits, store, specs)

    def _inputs(self, images: Tensor) -> Tensor:
        """What the one forward pass sees: the images (SmoothGrad-CAM++ adds noisy copies)."""
        return images

    def _acts(self, logits: Tensor, store: dict[str, Tensor]) -> list[Tensor]:
        """The hooked layers' outputs in `self.layers` order, once the forward pass checks out."""
        missing = [name for name in self.layers if name not in store]
        if missing:
            raise RuntimeError(f"layers {missing} were not called in the model's forward pass")
        if not isinstance(logits, Tensor) or logits.ndim != 2:
            raise TypeError("the model must return (N, K) logits")
        return [store[name] for name in self.layers]

    def _maps_from(self, logits: Tensor, store: dict[str, Tensor], specs: list[Any]) -> RawMaps:
        names = list(self.layers)
        acts = self._acts(logits, store)
        targets = [self._resolve(spec, logits, self.needs_grads) for spec in specs]
        acts32 = [a.detach().float() for a in acts]  # maps are combined in float32
        maps: list[list[Tensor]] = []
        if not self.needs_grads:
            for target in targets:
                maps.append([self._map(a, None, target) for a in acts32])
            return RawMaps(logits.detach().float(), targets, maps)
        backward = [i for i, t in enumerate(targets) if self._reuse(targets, i) is None]
        grads_of: dict[int, list[Tensor]] = {}
        for i, target in enumerate(targets):
            reuse = self._reuse(targets, i)
            if reuse is not None:
                # linear in the score: grad(l_a - w l_b) = grad(l_a) - w grad(l_b), no backward
                a, b = reuse
                w = target.weights[:, None, None, None]  # (N,) -> (N, 1, 1, 1)
                grads_of[i] = [ga - w * gb for ga, gb in zip(grads_of[a], grads_of[b], strict=True)]
            else:
                grads = torch.autograd.grad(
                    target.scores.sum(),
                    acts,
                    retain_graph=i != backward[-1],
                    allow_unused=True,
                )
                unused = [n for n, g in zip(names, grads, strict=True) if g is None]
                if unused:
                    raise RuntimeError(f"layers {unused} do not influence the target scores")
                grads_of[i] = [g.detach().float() for g in grads]
            maps.append([self._map(a, g, target) for a, g in zip(acts32, grads_of[i], strict=True)])
        # drop the scores so that nothing kept refers to this chunk's graph
        kept = [replace(t, scores=None) for t in targets]
        return RawMaps(logits.detach().float(), kept, maps)

    def _reuse(self, targets: list[Resolved], i: int) -> tuple[int, int] | None:
        """For a contrast, earlier plain sets (a, b) holding its two classes, if any."""
        t = targets[i]
        if t.versus is None or t.versus.ndim != 1 or not self.linear:
            return None
        plain = [
            j for j in range(i) if targets[j].versus is None and targets[j].indices is not None
        ]
        a = next((j for j in plain if torch.equal(targets[j].indices, t.indices)), None)
        b = next((j for j in plain if torch.equal(targets[j].indices, t.versus)), None)
        return None if a is None or b is None else (a, b)
