"""The words a command-line flag may take, in a module that imports nothing of camlens.

`camlens --help` builds every flag from these without importing torch; the modules that act on
them import them from here. `cam/` imports nothing else of camlens, so it keeps METHODS and
PRECISIONS itself: tests/test_imports.py keeps METHOD_NAMES and PRECISION_NAMES in step with them.
"""

from dataclasses import field
from typing import Any

__all__ = [
    "EVAL_BATCH_HELP",
    "option",
    "BACKENDS",
    "BASELINES",
    "BASELINE_KINDS",
    "DEFAULT_LAYERS",
    "DEFAULT_LIMIT",
    "COMPARE_LIMIT",
    "COMPARE_METHODS",
    "LAYOUTS",
    "METHOD_NAMES",
    "NORMS",
    "PADDINGS",
    "PRECISION_NAMES",
    "SORTS",
]

# camlens.cam.METHODS's keys, in its order
METHOD_NAMES = (
    "gradcam",
    "gradcam++",
    "smoothgradcam++",
    "xgradcam",
    "hirescam",
    "layercam",
    "gradcam-elementwise",
    "scorecam",
    "eigencam",
    "eigengradcam",
    "cam",
    "finercam",
    "refinecam",
    "fullgrad",
    "guidedgradcam",
    "ablationcam",
    "sscam",
    "iscam",
    "kpcacam",
    "shapleycam",
    "rollout",
)
# camlens.cam.LAYOUTS: how a hooked layer's output is read (auto, or forced)
LAYOUTS = ("auto", "nchw", "nhwc", "tokens")
# camlens.cam.PRECISIONS's keys: the CAM forward pass's precision
PRECISION_NAMES = ("fp32", "bf16", "fp16")
# the ResNet18's normalisation layers (camlens.model)
NORMS = ("batch", "layer", "group")
# how a random crop pads the image (camlens.data.transforms)
PADDINGS = ("zeros", "reflect")
# the process group's backend under torchrun (camlens.distributed)
BACKENDS = ("auto", "nccl", "gloo")
# the layers of a camlens ResNet18 explained unless told (every command; another model's
# default is the last layer before its global pooling, camlens.cam.pick_layer)
DEFAULT_LAYERS = ("layer3", "layer4")
# mistakes explained unless told, the first in sort order (most confident): a page and a
# gallery that open at ImageNet size (12k mistakes would make GBs); None explains every one
DEFAULT_LIMIT = 1000
# the order mistakes are explained in (camlens.explain)
SORTS = ("confidence", "margin", "index")
# what a job writes from the explain stream (camlens.pipeline.outputs.OUTPUTS, one module each):
# the gallery folder; the maps at native resolution, OUT/maps/<method>.safetensors
OUTPUT_NAMES = ("gallery", "maps")
# the baselines every compared score is judged against (camlens.metrics.baselines)
BASELINES = ("random", "centre")
# every kind of baseline map (camlens.metrics.baselines): "random-pixel" on request
BASELINE_KINDS = ("random", "centre", "random-pixel")
# compare's default methods: those that score in minutes on 2 CPU cores (camlens.compare);
# the costly ones (SS-CAM, IS-CAM, Ablation-CAM, full Score-CAM, ...) on request
COMPARE_METHODS = ("gradcam", "gradcam++", "layercam", "eigencam", "scorecam")
# mistakes (and as many correct images) a compare scores unless told: the default methods at
# two layers then fit minutes on 2 CPU cores (`camlens compare --limit`, `run --compare`)
COMPARE_LIMIT = 32
# the help of --eval-batch-size, a field of both ExplainPlan and TrainConfig (`camlens run`
# takes one flag for both)
EVAL_BATCH_HELP = "images per inference batch (evaluation, predictions)"


def option(default: Any, help: str, **flag: Any) -> Any:
    """A config dataclass's field with its flag's help; `flag` says how the flag is made
    (`camlens.cli.flags.add_config_flags`): `names` (default --FIELD), `choices` (of each item,
    for a list), `auto` (what None means, in words), `metavar`, and a `const` for a flag that
    may come bare. The CLI builds its flags from the fields: defaults and help live there."""
    return field(default=default, metadata={"help": help, **flag})
