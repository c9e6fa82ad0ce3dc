"""The flags several commands share, each defined once: the same flag means the same thing in
every command. `add_config_flags` makes one flag per field of a config dataclass, so the
defaults live only in the dataclass (TrainConfig, GridConfig)."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path

from camlens.choices import (
    BACKENDS,
    COMPARE_LIMIT,
    DEFAULT_LIMIT,
    LAYOUTS,
    METHOD_NAMES,
    OUTPUT_NAMES,
    PRECISION_NAMES,
)
from camlens.plan import COUNTERFACTUAL_MAX_SIDE, ExplainPlan
from camlens.train.config import TrainConfig

__all__ = [
    "LIMIT_HELP",
    "add_limit_flags",
    "OneLineParser",
    "add_checkpoint_flags",
    "add_compare_flag",
    "add_config_flags",
    "add_data_flags",
    "add_device_flags",
    "add_eval_batch_flag",
    "add_explain_flags",
    "add_layer_flag",
    "add_wandb_flags",
    "name_list",
]

# the same words wherever a flag appears: the same flag means the same thing in every command
LIMIT_HELP = "explain at most N mistakes, the first in sort order (pair statistics use all)"


def add_limit_flags(parser: argparse.ArgumentParser) -> None:
    """--limit N and --all: which mistakes a gallery and a report explain."""
    parser.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_LIMIT,
        help=f"{LIMIT_HELP} (default: {DEFAULT_LIMIT}, so that the page opens at any size)",
    )
    parser.add_argument(
        "--all",
        dest="limit",
        action="store_const",
        const=None,
        default=argparse.SUPPRESS,
        help="explain every mistake (a large test set makes a large page and gallery)",
    )


class OneLineParser(argparse.ArgumentParser):
    """argparse prints its usage block before an error; one line that names the flag is enough."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _field_type(tp) -> type:
    """The runtime type behind an annotation such as `int | None`."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return args[0]
    return tp


def add_config_flags(parser: argparse.ArgumentParser, config_type, prefix: str = "") -> None:
    """One flag per dataclass field: the defaults and help live only in the dataclass.

    `prefix` goes before each flag and its dest: GridConfig's `n` is compare's --grid-n."""
    hints = typing.get_type_hints(config_type)
    for f in dataclasses.fields(config_type):
        flag = "--" + (prefix + f.name).replace("_", "-")
        tp = _field_type(hints[f.name])
        default = f.metadata.get("auto", f.default)  # a rule in words where None means auto
        help_text = f"{f.metadata.get('help', '')} (default: {default})"
        if tp is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text
            )
        else:
            parser.add_argument(
                flag,
                type=tp,
                default=f.default,
                choices=f.metadata.get("choices"),
                help=help_text,
                metavar=f.name.upper() if "choices" not in f.metadata else None,
            )


def add_data_flags(
    parser: argparse.ArgumentParser, image_size: bool | None = True, required: bool = True
) -> None:
    """`image_size` None: --image-size defaults to what the model states (the --model commands).
    `required` False: a command that can read the source from elsewhere (view RUN)."""
    parser.add_argument(
        "--data",
        required=required,
        help="cifar10 | a folder with test/ or val/ (train/ to train) or of class folders | "
        "cifar-10-batches-py | a .tar(.gz) of either",
    )
    if image_size:
        parser.add_argument(
            "--image-size", type=int, default=32, help="images are resized to this (default: 32)"
        )
    elif image_size is None:
        parser.add_argument(
            "--image-size",
            "--crop",
            dest="image_size",
            type=int,
            help="the side of the centre crop the model sees (default: what the model states, "
            "else the short side of the data's first test image)",
        )
        # issue 33's data flags: camlens.data.DataConfig's fields
        parser.add_argument(
            "--classes",
            dest="class_names",
            metavar="FILE",
            help="class names: a .txt (one per line, in the sorted folders' order) or a .json "
            "(a list, index->name, or folder->name such as ImageNet's wnid->name)",
        )
        parser.add_argument(
            "--resize",
            type=int,
            help="resize the short side to this, then centre-crop (default: the model's "
            "crop_pct for timm:/torchvision:, else the crop size: a square image is kept whole)",
        )
        parser.add_argument(
            "--interpolation",
            help="the resize's: bicubic, bilinear, nearest, lanczos, box, hamming (default: "
            "the model's, else bicubic)",
        )
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bars"
    )


def add_checkpoint_flags(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """--model and the flags that say how to build, load and feed it (camlens.ModelConfig)."""
    parser.add_argument(
        "--model",
        "--checkpoint",
        dest="model",
        required=required,
        metavar="SPEC",
        help="a camlens checkpoint.safetensors, `shipped` or `shipped-layer`, FILE.py:FACTORY, "
        "package.module:FACTORY, timm:NAME or torchvision:NAME (--checkpoint: the same flag)",
    )
    parser.add_argument(
        "--weights",
        type=Path,
        help="the model's weights: .safetensors, or a state dict in .pt/.pth (not a pickled "
        "model); for FILE.py:FACTORY, timm: and torchvision: models",
    )
    parser.add_argument(
        "--mean",
        type=_triple("--mean"),
        metavar="R,G,B",
        help="the input mean the model was trained with, e.g. 0.485,0.456,0.406 "
        "(default: the checkpoint's or timm's own; else required)",
    )
    parser.add_argument(
        "--std", type=_triple("--std"), metavar="R,G,B", help="the input std, as --mean"
    )
    parser.add_argument(
        "--prefix-tokens",
        type=int,
        metavar="K",
        help="ViT: tokens before the patch grid (class, distillation, registers) "
        "(default: the model's num_prefix_tokens, else T - h*w)",
    )
    parser.add_argument(
        "--tokens-grid",
        type=_grid,
        metavar="HxW",
        help="ViT: the patch grid, e.g. 14x14 (default: the largest square of the tokens)",
    )


def _triple(flag: str):
    def parse(text: str) -> tuple[float, float, float]:
        from camlens.classifier import parse_triple  # imports torch: only once a value comes

        try:
            return parse_triple(text, flag)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def _grid(text: str) -> tuple[int, int]:
    h, sep, w = text.lower().partition("x")
    if not (sep and h.isdigit() and w.isdigit() and int(h) * int(w) > 0):
        raise argparse.ArgumentTypeError(f"takes HxW, e.g. 14x14, got {text!r}")
    return int(h), int(w)


def add_wandb_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wandb",
        action="store_true",
        help="also log to Weights & Biases (pip install 'camlens[wandb]'): files in OUT/wandb, "
        "offline without an API key (then `wandb sync` uploads it); resume continues the run",
    )
    parser.add_argument("--wandb-project", default="camlens", help="W&B project (default: camlens)")


def add_eval_batch_flag(parser: argparse.ArgumentParser) -> None:
    field = {f.name: f for f in dataclasses.fields(TrainConfig)}["eval_batch_size"]
    parser.add_argument(
        "--eval-batch-size",
        type=int,
        default=field.default,
        help=f"{field.metadata['help']} (default: {field.default})",
    )


def add_compare_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--compare",
        dest="compare_limit",
        type=int,
        nargs="?",
        const=COMPARE_LIMIT,
        metavar="N",
        help="also score the methods' faithfulness on N mistakes and N correct images and run "
        "their sanity checks, as `camlens compare` does, into OUT/compare.* and the report, "
        f"and print each method's verdict (N default: {COMPARE_LIMIT}, as compare's --limit)",
    )


def add_device_flags(parser: argparse.ArgumentParser, backend: bool = False) -> None:
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ..."
    )
    if backend:
        parser.add_argument(
            "--backend",
            default="auto",
            choices=BACKENDS,
            help="under torchrun: the process group's backend; auto is nccl on CUDA, gloo on "
            "the CPU (default: auto)",
        )


def name_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("names nothing")
    return names


def _methods(text: str) -> list[str]:
    names = name_list(text)
    for name in names:
        if name not in METHOD_NAMES:
            raise argparse.ArgumentTypeError(
                f"unknown {name!r}: choose from {', '.join(METHOD_NAMES)}"
            )
    return names


def add_layer_flag(parser: argparse.ArgumentParser, layer: str | None) -> None:
    """--layer, the same words in every command; `layer` its default (None: the model's)."""
    parser.add_argument(
        "--layer",
        type=name_list,
        default=layer.split(",") if layer else None,
        help="dotted layer name(s), comma-separated (default: "
        + (
            layer
            or "layer3,layer4 of a camlens model, else the last layer before the global pooling; "
            "`camlens summary --model SPEC` lists them"
        )
        + "); every method gives a map per layer: refinecam's is refined by the layers named "
        "after it, and fullgrad and guidedgradcam (maps at the image's size) read the layer as "
        "where their layer part stops: the bias terms up to it (fullgrad), its Grad-CAM "
        "(guidedgradcam)",
    )


def add_explain_flags(
    parser: argparse.ArgumentParser,
    layer: str | None,
    precision: bool | str = True,
    method: str = "gradcam",
    counterfactual: bool = True,
) -> None:
    """The CAM flags, the same in every command that explains; `counterfactual`: the command
    explains mistakes for a gallery or report, which may carry the counterfactual test;
    `precision`: "cam" where --precision is the training's (run): --cam-precision alone."""
    parser.add_argument(
        "--method",
        type=_methods,
        default=method.split(","),
        help=f"CAM method(s), comma-separated, of {', '.join(METHOD_NAMES)}; one gallery per "
        f"method in OUT/gallery/METHOD (default: {method})",
    )
    add_layer_flag(parser, layer)
    plan = ExplainPlan()  # the defaults live in the plan
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default=plan.layout,
        help="how the layer's output is read: nchw (N, C, h, w), nhwc (N, h, w, C; timm's Swin "
        "stages), tokens (N, T, C; a ViT's blocks); auto reads it from the output and the model "
        f"and says which on the line that names the layer (default: {plan.layout})",
    )
    if counterfactual:
        parser.add_argument(
            "--output",
            type=name_list,
            default=list(plan.outputs),
            help=f"what is written from the maps, comma-separated, of {', '.join(OUTPUT_NAMES)}: "
            "the gallery folder OUT/gallery/METHOD; the maps at each layer's own resolution, "
            "OUT/maps/METHOD.safetensors (camlens.read_maps) "
            f"(default: {','.join(plan.outputs)})",
        )
        parser.add_argument(
            "--counterfactual",
            action=argparse.BooleanOptionalAction,
            default=plan.counterfactual,
            help="the counterfactual test of each mistake: remove the top of its contrast map "
            "and of a random map, ask the model again; index.csv's cf* columns, a verdict line "
            "on each card and in the report (default: on for images up to "
            f"{COUNTERFACTUAL_MAX_SIDE} px, off above, said in one line)",
        )
    parser.add_argument(
        "--cam-batch-size",
        type=int,
        default=plan.cam_batch_size,
        help=f"images per CAM batch (default: {plan.cam_batch_size})",
    )
    if precision:
        # --precision too where the command trains nothing (there it is the training's)
        names = ["--cam-precision"] + (["--precision"] if precision != "cam" else [])
        parser.add_argument(
            *names,
            dest="cam_precision",
            choices=PRECISION_NAMES,
            default=plan.cam_precision,
            help="bf16: autocast the CAM forward pass, maps stay fp32 "
            f"(default: {plan.cam_precision})",
        )
