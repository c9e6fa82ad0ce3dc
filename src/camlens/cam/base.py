"""The shared machinery of every CAM method: layers, hooks, targets, upsampling, normalisation.

A method only decides how the hooked layer's `acts` (and `grads`) become a low-resolution map;
everything else lives here, once:

- `Engine` resolves `layer=` (dotted names or modules), checks `images`, splits big inputs into
  chunks, runs the model in eval mode (restoring each module's own train/eval flag afterwards),
  upsamples maps to the input size (bilinear), normalises them and builds a `CamResult`.
- `BaseCAM(Engine)` is the base of the one-forward methods (Grad-CAM and friends, Eigen-CAM,
  CAM): one forward pass with the layers hooked, then, for gradient methods, one partial
  backward per target set with `torch.autograd.grad` w.r.t. the hooked activations only (no
  parameter `.grad` is written, parameters' `requires_grad` is left alone). A subclass overrides
  `_map(acts, grads, target) -> (N, h, w)` and nothing else.

Targets (`targets=` of every call; one "target set" gives one map per image):
    None                 the predicted class
    tensor / list / int  a class index per image (an int means the same class for all)
    Contrast(a, b)       the signed map of logit[a] - logit[b] ("why a rather than b"); methods
                         linear in the gradients only (gradcam, hirescam, xgradcam, cam)
    callable(logits)     returns class indices (integer tensor (N,)) or scores (float (N,))

Normalisation (`CamConfig.normalize`): "minmax" per map (default), "none" (raw), "batch" (one
scale for the whole call), "pair" (one scale per image across the target sets of one call, e.g.
predicted and true class side by side). Signed maps are scaled by their max |value| into
[-1, 1] instead, never shifted or rectified. A constant or all-zero map comes out as zeros.

Hooks exist only during a call (registered inside `capture`, removed in its `finally`), so an
engine holds no hooks between calls; `with` and `close()` are there so that callers need not
know that.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "NORMALIZE",
    "BaseCAM",
    "CamConfig",
    "CamResult",
    "Contrast",
    "Engine",
    "PairResult",
    "RawMaps",
    "Target",
    "capture",
    "eval_mode",
    "find_layer",
    "normalize_cams",
    "resolve_layers",
    "upsample",
]

NORMALIZE = ("minmax", "none", "batch", "pair")


@dataclass(frozen=True)
class CamConfig:
    """Knobs shared by every method; each method reads the ones it needs."""

    # "minmax" per map, "none" raw, "batch" one scale per call, "pair" one per image across sets
    normalize: str = "minmax"
    # autocast dtype for the forward pass (torch.bfloat16 / torch.float16); None: as called.
    # Maps are combined in float32 either way.
    amp: torch.dtype | None = None
    # images per forward pass; None: the whole input at once (eval mode makes chunking exact)
    batch_size: int | None = None
    # Score-CAM: masked images per forward pass
    score_batch: int = 64
    # Score-CAM: keep only the k highest-variance channels per image (Faster Score-CAM); None: all
    top_k: int | None = None

    def __post_init__(self) -> None:
        if self.normalize not in NORMALIZE:
            raise ValueError(
                f"unknown normalize {self.normalize!r}: choose one of {', '.join(NORMALIZE)}"
            )
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {self.batch_size}")
        if self.score_batch < 1:
            raise ValueError(f"score_batch must be >= 1, got {self.score_batch}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {self.top_k}")


@dataclass(frozen=True)
class Contrast:
    """Target: the signed map of `logit[first] - logit[second]`, e.g. Contrast(preds, labels)."""

    first: Any
    second: Any


TargetSpec = None | int | Sequence[int] | Tensor | Contrast | Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Target:
    """One resolved target set for one chunk, as `_map` sees it."""

    indices: Tensor | None  # (N,) classes explained; None for a score callable
    versus: Tensor | None  # (N,) the subtracted class of a Contrast, else None
    scores: Tensor | None  # (N,) the differentiated scores (in the graph); None without grads

    @property
    def signed(self) -> bool:
        return self.versus is not None


@dataclass(frozen=True)
class CamResult:
    """The maps of one target set, with what produced them. All tensors are detached."""

    cams: Tensor  # (N, H, W) float32 in [0, 1] ([-1, 1] if signed); mean over the hooked layers
    layer_cams: Tensor  # (L, N, H, W) the same, one per hooked layer
    low_res: tuple[Tensor, ...]  # per layer (N, h, w): raw maps at native resolution
    raw_max: Tensor  # (L, N) each raw map's maximum (max |value| if signed) before normalising
    logits: Tensor  # (N, K) the model's output on the images
    targets: Tensor | None  # (N,) classes explained; None when a callable gave scores
    versus: Tensor | None  # (N,) the subtracted class of a Contrast target, else None
    layers: tuple[str, ...]  # dotted names of the hooked layers
    resolutions: tuple[tuple[int, int], ...]  # each layer's native (h, w)
    method: str  # METHODS key of the engine that made it
    normalize: str  # the normalisation applied to `cams` and `layer_cams`
    signed: bool = field(default=False)  # True for Contrast maps: show with a diverging colormap

    @property
    def preds(self) -> Tensor:
        """(N,) the predicted classes."""
        return self.logits.argmax(1)

    def layer(self, name: str) -> Tensor:
        """(N, H, W) the normalised map of one hooked layer."""
        if name not in self.layers:
            raise KeyError(f"no layer {name!r} in this result; it has {', '.join(self.layers)}")
        return self.layer_cams[self.layers.index(name)]


@dataclass(frozen=True)
class PairResult:
    """Predicted-class, true-class and contrast maps of the same images from one forward pass."""

    pred: CamResult  # maps of the predicted class
    true: CamResult  # maps of the true class (labels)
    contrast: CamResult | None  # signed map of logit[pred] - logit[true]; None if not linear


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule at a dotted name (`layer4`, `layer4.1.conv2`); unknown names list the valid."""
    modules = dict(model.named_modules())
    if name and name in modules:
        return modules[name]
    valid = ", ".join(n for n in modules if n)
    raise KeyError(f"no layer named {name!r} in {type(model).__name__}; valid names: {valid}")


def _layer_name(model: nn.Module, module: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module and name:
            return name
    raise KeyError(f"{type(module).__name__} is not a submodule of {type(model).__name__}")


def resolve_layers(
    model: nn.Module, layer: str | nn.Module | Sequence[str | nn.Module]
) -> dict[str, nn.Module]:
    """Dotted name -> module for `layer=` given as a name, a module or a list of them."""
    items = [layer] if isinstance(layer, (str, nn.Module)) else list(layer)
    if not items:
        raise ValueError("layer must name at least one layer")
    layers: dict[str, nn.Module] = {}
    for item in items:
        if isinstance(item, str):
            name, module = item, find_layer(model, item)
        elif isinstance(item, nn.Module):
            name, module = _layer_name(model, item), item
        else:
            raise TypeError(
                f"layer must be a dotted name or an nn.Module, got {type(item).__name__}"
            )
        if name in layers:
            raise ValueError(f"layer {name!r} is given twice")
        layers[name] = module
    return layers


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the call; each module's own flag back afterwards (they may differ)."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def capture(
    model: nn.Module, layers: dict[str, nn.Module], record: bool
) -> Iterator[dict[str, Tensor]]:
    """Hook `layers` for one forward pass; yields name -> the layer's output (`acts`).

    With `record`, grad mode is switched on at the first hooked layer: nothing computed before
    it is needed for d(score)/d(acts), so the network up to there runs as plain inference (run
    the forward under `torch.no_grad()`, whose exit restores the caller's mode). An output with
    no graph (frozen parameters, input without grad) becomes a leaf that requires grad.
    """
    acts: dict[str, Tensor] = {}

    def hook_for(name: str):
        def hook(module: nn.Module, inputs: Any, output: Any) -> Tensor:
            if not isinstance(output, Tensor) or output.ndim != 4:
                got = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
                raise TypeError(f"layer {name!r} must output a (N, C, h, w) tensor, got {got}")
            if record:
                torch.set_grad_enabled(True)
                a = output if output.requires_grad else output.detach().requires_grad_()
            else:
                a = output.detach()
            acts[name] = a  # a layer called twice keeps its last output
            # In-place ops downstream (ReLU(inplace=True)) then change the clone, not `acts`.
            return a.clone()

        return hook

    handles = []
    try:
        for name, module in layers.items():
            handles.append(module.register_forward_hook(hook_for(name)))
        yield acts
    finally:
        for handle in handles:
            handle.remove()


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """(N, h, w) -> (N, H, W) bilinear; the input's resolution is what a map is shown at."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def normalize_cams(maps: Sequence[Tensor], mode: str, signed: bool) -> list[Tensor]:
    """Scale a group of (N, H, W) maps; "pair" shares one scale per image across the group.

    Unsigned maps are min-max scaled into [0, 1]; signed ones divided by their max |value| into
    [-1, 1], so that zero stays zero for a diverging colormap. A map whose range is zero or only
    rounding noise comes out as zeros, never NaN.
    """
    if mode == "none":
        return list(maps)
    stack = torch.stack(list(maps))  # S x (N, H, W) -> (S, N, H, W)
    dims = {"minmax": (2, 3), "batch": (1, 2, 3), "pair": (0, 2, 3)}[mode]
    tiny = torch.finfo(stack.dtype).eps * 8
    if signed:
        scale = stack.abs().amax(dims, keepdim=True)
        out = torch.where(scale > 0, stack / scale.clamp_min(tiny), torch.zeros_like(stack))
    else:
        lo, hi = stack.amin(dims, keepdim=True), stack.amax(dims, keepdim=True)
        span = hi - lo
        flat = span <= tiny * torch.maximum(hi.abs(), lo.abs())
        out = torch.where(flat, 0.0, (stack - lo) / span.clamp_min(1e-30))
    return list(out.unbind(0))


@dataclass
class RawMaps:
    """What `_raw_chunk` returns: logits, and per target set its Target and per-layer maps."""

    logits: Tensor
    targets: list[Target]
    maps: list[list[Tensor]]  # [set][layer] (N, h, w) float32, before rectification


def _as_indices(value: Any, n: int, device: torch.device, what: str) -> Tensor:
    t = torch.as_tensor(value, device=device)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{what} must be integer class indices, got dtype {t.dtype}")
    if t.ndim == 0:
        t = t.expand(n)
    if t.ndim != 1 or t.shape[0] != n:
        raise ValueError(
            f"{what} has {t.shape[0] if t.ndim == 1 else tuple(t.shape)} entries but the batch "
            f"has {n} images: give one class per image"
        )
    return t.long()


def _check_range(t: Tensor, k: int, what: str) -> None:
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= k):
        raise ValueError(
            f"{what} must be class indices in [0, {k}); got values {int(t.min())}..{int(t.max())}"
        )


E = TypeVar("E", bound="Engine")


class Engine:
    """Everything but how maps are made: layers, config, chunks, eval mode, normalisation.

    Subclasses implement `_raw_chunk(images, specs) -> RawMaps` and set `name`, `linear`
    (whether the map is linear in the target score, which Contrast needs) and `rectify`.
    """

    name = "engine"
    linear = False  # map linear in the target score: Contrast targets allowed
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
        self.config = replace(config or CamConfig(), **overrides)
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
        """(N, 3, H, W) images -> (N, H, W) maps in [0, 1] ([-1, 1] for a Contrast)."""
        return self.explain(images, targets).cams

    def explain(
        self, images: Tensor, targets: TargetSpec = None, normalize: str | None = None
    ) -> CamResult:
        """Maps of one target set, with logits, raw maps and layer details."""
        return self.explain_many(images, [targets], normalize)[0]

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
                part = [_slice_spec(s, start, start + step) for s in specs]
                chunks.append(self._raw_chunk(images[start : start + step], part))
        with _no_autocast(device):
            return self._finish(chunks, tuple(images.shape[-2:]), mode)

    def explain_pair(
        self, images: Tensor, labels: TargetSpec, normalize: str | None = None
    ) -> PairResult:
        """Predicted-class, true-class and (linear methods) contrast maps in one forward pass."""
        if self.linear:
            sets: list[TargetSpec] = [None, labels, Contrast(None, labels)]
        else:
            sets = [None, labels]
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
        if spec is None or callable(spec):
            return spec
        if isinstance(spec, Contrast):
            if not self.linear:
                raise ValueError(
                    f"Contrast targets need a method linear in the target score "
                    f"(gradcam, hirescam, xgradcam, cam), not {self.name}"
                )
            first = None if spec.first is None else _as_indices(spec.first, n, device, "targets")
            second = _as_indices(spec.second, n, device, "Contrast.second")
            return Contrast(first, second)
        return _as_indices(spec, n, device, "targets")

    def _resolve(self, spec: Any, logits: Tensor, want_scores: bool) -> Target:
        """Turn a prepared spec into class indices (and scores) given this chunk's logits."""
        n, k = logits.shape
        versus = None
        if spec is None:
            indices = logits.argmax(1)
        elif isinstance(spec, Contrast):
            indices = logits.argmax(1) if spec.first is None else spec.first
            versus = spec.second
            _check_range(versus, k, "Contrast.second")
        elif isinstance(spec, Tensor):
            indices = spec
        else:
            out = spec(logits)
            if not isinstance(out, Tensor) or out.shape != (n,):
                got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(f"a targets callable must return shape ({n},), got {got}")
            if out.is_floating_point():
                if not want_scores and self.needs_indices:
                    raise ValueError(f"{self.name} needs class indices, not scores, as targets")
                return Target(None, None, out.float() if want_scores else None)
            indices = out.long()
        _check_range(indices, k, "targets")
        scores = None
        if want_scores:
            # (N, K) -> (N,) the explained score; float32 so that a bf16 sum does not round
            scores = logits.gather(1, indices[:, None])[:, 0].float()
            if versus is not None:
                scores = scores - logits.gather(1, versus[:, None])[:, 0].float()
        return Target(indices, versus, scores)

    def _finish(self, chunks: list[RawMaps], size: tuple[int, int], mode: str) -> list[CamResult]:
        names = tuple(self.layers)
        n_sets = len(chunks[0].targets)
        logits = torch.cat([c.logits for c in chunks]).detach()
        signed = [chunks[0].targets[s].signed for s in range(n_sets)]
        low_res: list[list[Tensor]] = []  # [set][layer] (N, h, w)
        for s in range(n_sets):
            per_layer = []
            for li in range(len(names)):
                raw = torch.cat([c.maps[s][li] for c in chunks])
                per_layer.append(raw if signed[s] or not self.rectify else raw.clamp_min(0))
            low_res.append(per_layer)
        resolutions = tuple(tuple(m.shape[-2:]) for m in low_res[0])
        # per layer, normalise each group of same-signedness sets together (for "pair")
        layer_cams: list[list[Tensor]] = [[] for _ in range(n_sets)]
        for li in range(len(names)):
            for group in (False, True):
                members = [s for s in range(n_sets) if signed[s] == group]
                if not members:
                    continue
                ups = [upsample(low_res[s][li], size) for s in members]
                for s, m in zip(members, normalize_cams(ups, mode, group), strict=True):
                    layer_cams[s].append(m)
        combined: list[Tensor] = [lc[0] for lc in layer_cams]
        if len(names) > 1:
            means = [torch.stack(lc).mean(0) for lc in layer_cams]  # L x (N, H, W) -> (N, H, W)
            for group in (False, True):
                members = [s for s in range(n_sets) if signed[s] == group]
                if members:
                    normed = normalize_cams([means[s] for s in members], mode, group)
                    for s, m in zip(members, normed, strict=True):
                        combined[s] = m
        results = []
        for s in range(n_sets):
            targets = [c.targets[s] for c in chunks]
            idx = None if targets[0].indices is None else torch.cat([t.indices for t in targets])
            vs = None if targets[0].versus is None else torch.cat([t.versus for t in targets])
            raw_max = torch.stack(
                [(m.abs() if signed[s] else m).amax((1, 2)) for m in low_res[s]]
            )  # L x (N, h, w) -> (L, N)
            results.append(
                CamResult(
                    cams=combined[s].detach(),
                    layer_cams=torch.stack(layer_cams[s]).detach(),
                    low_res=tuple(m.detach() for m in low_res[s]),
                    raw_max=raw_max.detach(),
                    logits=logits,
                    targets=None if idx is None else idx.detach(),
                    versus=None if vs is None else vs.detach(),
                    layers=names,
                    resolutions=resolutions,
                    method=self.name,
                    normalize=mode,
                    signed=signed[s],
                )
            )
        return results

    def _forward_context(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.config.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.config.amp)


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    return torch.autocast(device_type=device.type, enabled=False)


def _slice_spec(spec: Any, start: int, stop: int) -> Any:
    if isinstance(spec, Tensor):
        return spec[start:stop]
    if isinstance(spec, Contrast):
        first = None if spec.first is None else spec.first[start:stop]
        return Contrast(first, spec.second[start:stop])
    return spec


class BaseCAM(Engine):
    """Base of the one-forward methods: a subclass overrides `_map` only.

    Gradient methods (`needs_grads = True`) get `grads` = d(sum of target scores)/d(acts) from
    one `torch.autograd.grad` per target set on the one forward pass; activation-only methods
    get `grads=None` and run the forward under `torch.no_grad()`.
    """

    needs_grads = True

    def _map(self, acts: Tensor, grads: Tensor | None, target: Target) -> Tensor:
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
            capture(self.model, self.layers, record=self.needs_grads) as store,
            self._forward_context(images.device),
        ):
            logits = self.model(images)
        # the targets and their backward need grad mode, also inside a caller's no_grad();
        # maps are combined in float32, also inside a caller's autocast
        with torch.enable_grad(), _no_autocast(images.device):
            return self._maps_from(logits, store, specs)

    def _maps_from(self, logits: Tensor, store: dict[str, Tensor], specs: list[Any]) -> RawMaps:
        names = list(self.layers)
        missing = [name for name in names if name not in store]
        if missing:
            raise RuntimeError(f"layers {missing} were not called in the model's forward pass")
        if not isinstance(logits, Tensor) or logits.ndim != 2:
            raise TypeError("the model must return (N, K) logits")
        acts = [store[name] for name in names]
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
                # linear in the score: grad(l_a - l_b) = grad(l_a) - grad(l_b), no extra backward
                a, b = reuse
                grads_of[i] = [ga - gb for ga, gb in zip(grads_of[a], grads_of[b], strict=True)]
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
        kept = [Target(t.indices, t.versus, None) for t in targets]
        return RawMaps(logits.detach().float(), kept, maps)

    def _reuse(self, targets: list[Target], i: int) -> tuple[int, int] | None:
        """For a Contrast, earlier plain sets (a, b) holding its two classes, if any."""
        t = targets[i]
        if t.versus is None or not self.linear:
            return None
        plain = [
            j for j in range(i) if targets[j].versus is None and targets[j].indices is not None
        ]
        a = next((j for j in plain if torch.equal(targets[j].indices, t.indices)), None)
        b = next((j for j in plain if torch.equal(targets[j].indices, t.versus)), None)
        return None if a is None or b is None else (a, b)
