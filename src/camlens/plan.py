"""The plan of a job: what it explains and how, built once, checked once, passed whole.

Kept apart from `camlens.explain` and free of torch, so that the CLI builds its flags and their
defaults from `ExplainPlan` without importing torch (`camlens --help` answers at once).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from camlens.choices import (
    COMPARE_LIMIT,
    DEFAULT_LIMIT,
    EVAL_BATCH_HELP,
    LAYOUTS,
    METHOD_NAMES,
    OUTPUT_NAMES,
    PRECISION_NAMES,
    SORTS,
    option,
)

if TYPE_CHECKING:
    from torch import nn

    from camlens.cam import CamConfig, Knobs

__all__ = [
    "COUNTERFACTUAL_MAX_SIDE",
    "ExplainError",
    "ExplainPlan",
    "GridConfig",
    "check_explainable",
    "check_methods",
    "layer_parts",
]


# the largest image side at which the counterfactual test is on by default: at 32 px (CIFAR)
# it adds a third to the demo; at 224 px it costs several times the maps (docs/performance.md)
COUNTERFACTUAL_MAX_SIDE = 64


class ExplainError(ValueError):
    """A method, layer, class name, sort or precision that cannot be explained as asked."""


LAYER_AUTO = (
    "layer3,layer4 of a camlens model, else the last layer before the global pooling; "
    "`camlens summary --model SPEC` lists them"
)


@dataclass(frozen=True)
class ExplainPlan:
    """What a job explains and how: built once (flags or notebook), checked once, passed whole.

    Lists become tuples. Errors are one-line `ExplainError`s that name what is wrong. Each
    field's help is its flag's (`camlens.cli.flags.add_plan_flags`).
    """

    methods: tuple[str, ...] = option(
        ("gradcam",),
        "CAM method(s), comma-separated (one gallery per method in OUT/gallery/METHOD)",
        names=("--method",),
        choices=METHOD_NAMES,
    )
    # "layer3+layer4" is one engine on both, which compare scores as one combined map and a
    # gallery shows layer by layer (`hooked_layers`); None: resolved before the check
    # (`prepare_plan`)
    layers: tuple[str, ...] | None = option(
        None,
        "dotted layer name(s), comma-separated; A+B is one map of both; every method gives a "
        "map per layer: refinecam's is refined by the layers named after it, and fullgrad and "
        "guidedgradcam (maps at the image's size) read the layer as where their layer part "
        "stops: the bias terms up to it (fullgrad), its Grad-CAM (guidedgradcam)",
        names=("--layer",),
        auto=LAYER_AUTO,
    )
    layout: str = option(
        "auto",
        "how the layer's output is read: nchw (N, C, h, w), nhwc (N, h, w, C; timm's Swin "
        "stages), tokens (N, T, C; a ViT's blocks); auto reads it from the output and the model "
        "and says which on the line that names the layer",
        choices=LAYOUTS,
    )
    cam_batch_size: int = option(64, "images per CAM pass: one forward, a backward per target")
    eval_batch_size: int = option(64, EVAL_BATCH_HELP)
    # named apart from the training's precision (TrainConfig.precision), which `run` also takes
    cam_precision: str = option(
        "fp32",
        "bf16: autocast the CAM forward pass, maps stay fp32 (fp16 is refused)",
        choices=PRECISION_NAMES,
    )
    limit: int | None = option(
        DEFAULT_LIMIT,
        "explain at most N mistakes, the first in sort order (pair statistics use all), so "
        "that the page opens at any size; --all: every one",
        metavar="N",
    )
    sort: str = option("confidence", "the order the mistakes are explained in", choices=SORTS)
    label_name: str | None = option(
        None,
        "only mistakes of this true class",
        names=("--label", "--true"),
        metavar="CLASS",
        auto="every class",
    )
    pred_name: str | None = option(
        None,
        "only mistakes predicted as this class",
        names=("--pred",),
        metavar="CLASS",
        auto="every class",
    )
    # the maps are the same whatever the chunk: only memory and resuming granularity change
    chunk_size: int | None = option(
        None,
        "mistakes per streamed chunk, rounded up to whole CAM batches",
        auto="one CAM batch",
    )
    compare_limit: int | None = option(
        None,
        "also score the methods' faithfulness on N mistakes and N correct images and run "
        "their sanity checks, as `camlens compare` does, into OUT/compare.* and the report, "
        f"and print each method's verdict (N default: {COMPARE_LIMIT}, as compare's --limit)",
        names=("--compare",),
        metavar="N",
        const=COMPARE_LIMIT,
        auto="no compare",
    )
    # the report and compare read the stream's maps whatever these are
    outputs: tuple[str, ...] = option(
        ("gallery",),
        "what is written from the maps, comma-separated (gallery: the folder OUT/gallery/METHOD; "
        "maps: each layer's at its own resolution, OUT/maps/METHOD.safetensors, read_maps)",
        names=("--output",),
        choices=OUTPUT_NAMES,
    )
    # named apart from the training's seed (TrainConfig.seed)
    metric_seed: int = option(
        0,
        "the metrics' draws: compare's correct-image sample, baselines, ROAD; the "
        "counterfactual's random map",
    )
    # the methods' own knobs, a camlens.cam.Knobs per method that has some (ScoreKnobs(top_k=8),
    # SmoothKnobs(samples=8), ...), each for a method of `methods`; the others' defaults
    knobs: tuple[Knobs, ...] = ()
    progress: bool = False  # progress bars for maps, cards and pages
    # camlens.metrics.counterfactual; the demo stays under a minute with it on 2 quiet CPU
    # cores (16-17 s against 12 s without; docs/report.md); its seven forwards per mistake
    # cost several times the maps' one at 224 px (docs/performance.md)
    counterfactual: bool | None = option(
        None,
        "the counterfactual test of each mistake: remove the top of its contrast map (a "
        "non-linear method's: its predicted-class map) and of a random map, ask the model "
        "again; index.csv's cf* columns, a verdict line on each card and in the report",
        auto=f"on for images up to {COUNTERFACTUAL_MAX_SIDE} px, off above, said in one line",
    )

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
        # each Knobs belongs to one method (its `method`), which the plan must name, once
        object.__setattr__(self, "knobs", tuple(self.knobs))
        owners = [getattr(k, "method", None) for k in self.knobs]
        for knobs, owner in zip(self.knobs, owners, strict=True):
            if owner not in self.methods:
                raise ExplainError(
                    f"{type(knobs).__name__} is {owner}'s knobs, and {owner} is not among the "
                    f"methods ({', '.join(self.methods)}): add it, or leave its knobs out"
                )
            if owners.count(owner) > 1:
                raise ExplainError(f"{owner}'s knobs are given twice: give them once")

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
        check_explainable(model, self.methods or ("",), self.hooked_layers, self.cam_precision)
        return self

    def only_method(self, job: str) -> str:
        """The plan's one method, for a `job` that compares one method's maps (diff, the
        maps across epochs); ExplainError when it names more, rather than a silent cut."""
        if len(self.methods) != 1:
            raise ExplainError(
                f"{job} compares one method's maps: name one, got {','.join(self.methods)}"
            )
        return self.methods[0]

    def engine_config(self, method: str, normalize: str) -> CamConfig:
        """`method`'s engine config: its knobs, the plan's batch, precision and layout."""
        from camlens.cam import CamConfig  # needs torch: imported when an engine is built

        own = [k for k in self.knobs if k.method == method]
        return CamConfig(
            normalize=normalize,
            precision=self.cam_precision,
            batch_size=self.cam_batch_size,
            layout=self.layout,
            knobs=own[0] if own else None,
        )


@dataclass(frozen=True)
class GridConfig:
    """The grid localisation test (`camlens.metrics.grid`): n x n tiles of confident, correct
    test images of distinct classes in one input; the map of each tile's class should fall in
    its tile. Torch-free, beside the plan, so that compare's --grid-* flags come from here.
    """

    # tiles per side: n x n images of n^2 distinct classes per grid; chance is 1/n^2
    n: int = option(2, "tiles per side of a grid (2 or 3): n x n images of distinct classes")
    # grids at most: each image is used once, so a test split bounds it too
    count: int = option(64, "grids at most (each test image in one grid at most)")
    # a tile's image must be correct with this softmax or more: the model surely sees its class
    confidence: float = option(0.9, "a tile's image is correctly classified with softmax > this")
    # fewer grids than this (after the leakage control) and the test says it has too few images:
    # with G grids no paired test can be surer than the sign test's 2 / 2^G, so 16 lets a map
    # that wins on every grid pass Holm over compare's 60 grid cells (2 / 2^16 x 60 < 0.05)
    min_grids: int = option(16, "fewer grids than this: too few images for the grid test")
    seed: int = option(0, "which images go into which grid, and at which tile")

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


def check_methods(methods: Sequence[str]) -> None:
    """Raise ExplainError, naming the known ones, unless each of `methods` is a method."""
    unknown = [m for m in methods if m not in METHOD_NAMES]
    if unknown:
        raise ExplainError(f"unknown method {unknown[0]!r}: choose from {', '.join(METHOD_NAMES)}")


def check_explainable(
    model: nn.Module, methods: Sequence[str], layers: Sequence[str], precision: str = "fp32"
) -> None:
    """Raise ExplainError, naming what is valid, unless `model` can be explained as asked.
    Cheap: callers check before hours of training rather than after.
    """
    from camlens.cam import PRECISIONS, find_layer  # torch: imported when a job runs
    from camlens.cam.precision import FP16_REFUSED

    check_methods(methods)
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
