"""The plan of a job: what it explains and how, built once, checked once, passed whole.

Kept apart from `camlens.explain` and free of torch, so that the CLI builds its flags and their
defaults from `ExplainPlan` without importing torch (`camlens --help` answers at once).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from camlens.choices import DEFAULT_LIMIT, OUTPUT_NAMES, SORTS

if TYPE_CHECKING:
    from torch import nn

    from camlens.cam import CamConfig

__all__ = [
    "COUNTERFACTUAL_MAX_SIDE",
    "ExplainError",
    "ExplainPlan",
    "GridConfig",
    "check_explainable",
    "layer_parts",
]


# the largest image side at which the counterfactual test is on by default: at 32 px (CIFAR)
# it adds a third to the demo; at 224 px it costs several times the maps (docs/performance.md)
COUNTERFACTUAL_MAX_SIDE = 64


class ExplainError(ValueError):
    """A method, layer, class name, sort or precision that cannot be explained as asked."""


@dataclass(frozen=True)
class ExplainPlan:
    """What a job explains and how: built once (flags or notebook), checked once, passed whole.

    Lists become tuples. Errors are one-line `ExplainError`s that name what is wrong.
    """

    # CAM methods, names of `camlens.cam.METHODS`; one gallery each
    methods: tuple[str, ...] = ("gradcam",)
    # the explained layers, dotted names; "layer3+layer4" is one engine on both, which compare
    # scores as one combined map and a gallery shows layer by layer (`hooked_layers`); None:
    # the last layer before the global pooling, resolved before the check (`prepare_plan`)
    layers: tuple[str, ...] | None = None
    # how the layers' outputs are read: "auto", or forced "nchw", "nhwc", "tokens" (LAYOUTS)
    layout: str = "auto"
    cam_batch_size: int = 64  # images per CAM pass: one forward, a partial backward per target
    eval_batch_size: int = 64  # images per inference batch (evaluation, predictions)
    # the CAM forward pass: fp32, or bf16 autocast (fp16 refused); named apart from the
    # training's precision (TrainConfig.precision), which `camlens run` also takes
    cam_precision: str = "fp32"
    # explain at most this many mistakes, the first in `sort` order; None: every one
    limit: int | None = DEFAULT_LIMIT
    sort: str = "confidence"  # order of the mistakes: one of SORTS
    label_name: str | None = None  # only mistakes of this true class (a class name)
    pred_name: str | None = None  # only mistakes predicted as this class
    # mistakes per streamed chunk, rounded up to whole CAM batches; None: one batch. The maps
    # are the same whatever the chunk: only memory and resuming granularity change
    chunk_size: int | None = None
    # also `compare` the methods on this many mistakes (and as many correct images); None: no
    compare_limit: int | None = None
    # what is written from the stream, names of OUTPUT_NAMES (camlens.pipeline.outputs): the
    # gallery, the maps file; the report and compare read the stream's maps whatever these are
    outputs: tuple[str, ...] = ("gallery",)
    # the metrics' random draws: compare's correct-image sample, baselines and ROAD, the
    # counterfactual's random map; named apart from the training's seed (TrainConfig.seed)
    metric_seed: int = 0
    # the methods' own knobs (Score-CAM's top_k, SmoothGrad's samples, ...); its batch_size,
    # precision and normalize are set by the plan and by each step (`engine_config`)
    # None: each method's default knobs (a CamConfig is built only when an engine is, so that
    # the CLI can read these defaults without importing torch)
    cam: CamConfig | None = None
    progress: bool = False  # progress bars for maps, cards and pages
    # the counterfactual test of every explained mistake (camlens.metrics.counterfactual):
    # remove the top of its contrast map (a non-linear method's: its predicted-class map) and
    # of a smooth random map, and ask the model again. On: the demo stays under a minute with
    # it on 2 quiet CPU cores (16-17 s against 12 s without; docs/report.md). None: on for
    # images up to COUNTERFACTUAL_MAX_SIDE px, off above (`counterfactual_on`): its seven
    # forwards per mistake cost several times the maps' one (docs/performance.md)
    counterfactual: bool | None = None

    def __post_init__(self) -> None:
        # frozen: the sequences become tuples once, here. The numbers are checked now (before
        # any training); methods, layers and precision with the model, in `check`
        object.__setattr__(self, "methods", tuple(self.methods))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        unknown = [o for o in self.outputs if o not in OUTPUT_NAMES]
        if unknown:
            raise ExplainError(
                f"unknown output {unknown[0]!r}: choose from {', '.join(OUTPUT_NAMES)}"
            )
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers))
        if self.sort not in SORTS:
            raise ExplainError(f"unknown sort {self.sort!r}: choose from {', '.join(SORTS)}")
        lows = {"cam_batch_size": 1, "eval_batch_size": 1, "limit": 0, "chunk_size": 1}
        lows["compare_limit"] = 1  # the images scored per subset
        for name, low in lows.items():
            value = getattr(self, name)
            if value is not None and value < low:
                flag = "--compare" if name == "compare_limit" else "--" + name.replace("_", "-")
                raise ExplainError(f"{flag} must be >= {low}, got {value}")
        # the batch size, precision and normalisation of the maps have one home each: the
        # plan's fields and each step's normalisation, which `engine_config` sets on `cam`
        changed = self.cam.changed() if self.cam is not None else {}
        shared = sorted(changed.keys() & {"batch_size", "precision", "normalize"})
        if shared:
            home = {"batch_size": "cam_batch_size", "precision": "cam_precision"}.get(shared[0])
            fix = f"set ExplainPlan({home}=...)" if home else "each step sets it"
            raise ExplainError(f"cam.{shared[0]} is not the plan's knob to set: {fix}")

    def counterfactual_on(self, side: int) -> bool:
        """Whether the counterfactual test runs on images `side` px a side: the plan's choice,
        else on up to COUNTERFACTUAL_MAX_SIDE px."""
        if self.counterfactual is not None:
            return self.counterfactual
        return side <= COUNTERFACTUAL_MAX_SIDE

    @property
    def hooked_layers(self) -> tuple[str, ...]:
        """The layers an engine hooks: each part of each entry of `layers`, once, in order."""
        return tuple(dict.fromkeys(p for entry in self.layers or () for p in layer_parts(entry)))

    def check(self, model: nn.Module) -> ExplainPlan:
        """Raise ExplainError unless `model` can be explained as planned; once per job, first."""
        if self.layers is not None and len(set(self.layers)) < len(self.layers):
            raise ExplainError(
                f"a layer is named twice in {', '.join(self.layers)}: name each once"
            )
        check_explainable(
            model, self.methods or ("",), self.hooked_layers, self.cam_precision, self.cam
        )
        return self

    def only_method(self, job: str) -> str:
        """The plan's one method, for a `job` that compares one method's maps (diff, the
        maps across epochs); ExplainError when it names more, rather than a silent cut."""
        if len(self.methods) != 1:
            raise ExplainError(
                f"{job} compares one method's maps: name one, got {','.join(self.methods)}"
            )
        return self.methods[0]

    def engine_config(self, normalize: str) -> CamConfig:
        """The engine's config: the methods' knobs, the plan's batch and precision."""
        from camlens.cam import CamConfig  # needs torch: imported when an engine is built

        return replace(
            self.cam or CamConfig(),
            batch_size=self.cam_batch_size,
            precision=self.cam_precision,
            normalize=normalize,
            layout=self.layout,
        )


def _opt(default, help: str):
    """A field with its --help line (the CLI's flags are built from the fields)."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class GridConfig:
    """The grid localisation test (`camlens.metrics.grid`): n x n tiles of confident, correct
    test images of distinct classes in one input; the map of each tile's class should fall in
    its tile. Torch-free, beside the plan, so that compare's --grid-* flags come from here.
    """

    # tiles per side: n x n images of n^2 distinct classes per grid; chance is 1/n^2
    n: int = _opt(2, "tiles per side of a grid (2 or 3): n x n images of distinct classes")
    # grids at most: each image is used once, so a test split bounds it too
    count: int = _opt(64, "grids at most (each test image in one grid at most)")
    # a tile's image must be correct with this softmax or more: the model surely sees its class
    confidence: float = _opt(0.9, "a tile's image is correctly classified with softmax > this")
    # fewer grids than this (after the leakage control) and the test says it has too few images:
    # with G grids no paired test can be surer than the sign test's 2 / 2^G, so 16 lets a map
    # that wins on every grid pass Holm over compare's 60 grid cells (2 / 2^16 x 60 < 0.05)
    min_grids: int = _opt(16, "fewer grids than this: too few images for the grid test")
    seed: int = _opt(0, "which images go into which grid, and at which tile")

    def __post_init__(self) -> None:
        if self.n not in (2, 3):
            raise ExplainError(f"--grid-n must be 2 or 3, got {self.n}")
        if not 0 <= self.confidence < 1:
            raise ExplainError(f"--grid-confidence must be in [0, 1), got {self.confidence}")
        if self.count < 1 or self.min_grids < 1:
            raise ExplainError(
                f"--grid-count and --grid-min-grids must be >= 1, got {self.count}, "
                f"{self.min_grids}"
            )


def layer_parts(entry: str) -> list[str]:
    """The layers of one `layers` entry: "layer3+layer4" is one engine on both."""
    return entry.split("+")


def check_explainable(
    model: nn.Module,
    methods: Sequence[str],
    layers: Sequence[str],
    precision: str = "fp32",
    cam: CamConfig | None = None,
) -> None:
    """Raise ExplainError, naming what is valid, unless `model` can be explained as asked.

    `cam`: the methods' knobs; each changed knob must be read by one of `methods` (each method
    gets its own knobs, `engine_for`), so that none is silently ignored.
    Cheap: callers check before hours of training rather than after.
    """
    from camlens.cam import METHODS, PRECISIONS, find_layer  # torch: imported when a job runs
    from camlens.cam.config import KNOBS, SHARED_KNOBS
    from camlens.cam.precision import FP16_REFUSED

    for method in methods:
        if method not in METHODS:
            raise ExplainError(f"unknown method {method!r}: choose from {', '.join(METHODS)}")
    for knob in (cam.changed() if cam is not None else {}).keys() - SHARED_KNOBS:
        if not any(knob in KNOBS[m] for m in methods):
            readers = [name for name, knobs in KNOBS.items() if knob in knobs]
            raise ExplainError(
                f"{knob} is read only by {', '.join(readers)}, and none is among the methods "
                f"({', '.join(methods)}): add one, or leave {knob} at its default"
            )
    if not layers:
        raise ExplainError("no layer to explain: name one, e.g. layer4")
    if len(set(layers)) < len(layers):
        raise ExplainError(f"a layer is named twice in {', '.join(layers)}: name each once")
    for layer in layers:
        try:
            find_layer(model, layer)
        except KeyError as e:  # its message lists the model's layer names
            raise ExplainError(e.args[0]) from None
    if precision not in PRECISIONS:
        raise ExplainError(f"unknown precision {precision!r}: choose from {', '.join(PRECISIONS)}")
    if precision == "fp16":
        raise ExplainError(FP16_REFUSED)
