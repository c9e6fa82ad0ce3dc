"""The argparse side of the `camlens` command: the parser, its flags and the examples in --help.

`build_parser()` wires each subcommand to its `cmd_*` in `commands.py`; `add_config_flags` makes
one flag per field of a config dataclass, so the defaults live only in the dataclass.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path

from camlens.choices import (
    BACKENDS,
    COMPARE_LIMIT,
    COMPARE_METHODS,
    LAYOUTS,
    METHOD_NAMES,
    PRECISION_NAMES,
    SORTS,
)
from camlens.plan import ExplainPlan, GridConfig
from camlens.train.config import TrainConfig
from camlens.version import __version__

__all__ = [
    "COMPARE_EXAMPLE",
    "DEMO_EXAMPLE",
    "EVALUATE_EXAMPLE",
    "EXPLAIN_EXAMPLE",
    "EXPORT_EXAMPLE",
    "REPORT_EXAMPLE",
    "RUN_EXAMPLE",
    "SUMMARY_EXAMPLE",
    "TRAIN_EXAMPLE",
    "OneLineParser",
    "add_config_flags",
    "build_parser",
]

DEMO_EXAMPLE = """example:
  camlens demo                          # offline: shipped model, bundled sample -> report.html
  camlens demo --out /tmp/demo --method gradcam,gradcam++"""
RUN_EXAMPLE = """example:
  camlens run --data cifar10 --out runs/quick --epochs 1 --subset 2000   # CIFAR-10, downloaded
  camlens run --data my-images --out runs/mine --epochs 30   # my-images/{train,test}/<class>/
  (run it again after a kill: it resumes training, then redoes the later steps)"""
TRAIN_EXAMPLE = """example:
  camlens train --data cifar10 --out runs/quick --epochs 1 --subset 2000
  camlens train --data cifar10 --out runs/r18 --epochs 30           # official batches, downloaded
  camlens train --data cifar10 --out runs/r18 --epochs 30 --resume  # continue a killed run
  torchrun --nproc_per_node 4 -m camlens train --data cifar10 --out runs/r18 --epochs 30
      (4 processes, one GPU each: --batch-size is the global batch, split across them)"""
EVALUATE_EXAMPLE = """example:
  camlens evaluate --checkpoint shipped --data sample --out eval     # offline, bundled
  camlens evaluate --checkpoint runs/quick/checkpoint.safetensors --data cifar10 \\
      --out runs/quick/eval --tta"""
EXPLAIN_EXAMPLE = """example:
  camlens explain --checkpoint shipped --data sample --out explain --layer layer3,layer4
  camlens explain --over-epochs runs/r18 --data cifar10 --out epochs   # train --keep-every K
  camlens explain --checkpoint runs/quick/checkpoint.safetensors --data cifar10 \\
      --out runs/quick/explain --method gradcam,gradcam++ --label cat --pred dog --limit 50
  (several methods: one gallery per method, OUT/gallery/gradcam/, OUT/gallery/gradcam++/)"""
COMPARE_EXAMPLE = """example:
  camlens compare --checkpoint shipped --data sample --out compare --limit 32
  camlens compare --checkpoint runs/r18/checkpoint.safetensors --data cifar10 --out cmp \\
      --method gradcam,scorecam --layer layer4
  camlens compare --checkpoint shipped --data sample --out refine --limit 32 \\
      --method refinecam --layer layer4,layer3+layer4    # A+B: one engine on both layers
  (writes OUT/compare.csv, compare.json, compare.png and sanity.png, all at the end)"""
DIFF_EXAMPLE = """example:
  camlens diff --checkpoint shipped --checkpoint shipped-layer --data sample --out diff
  camlens diff --checkpoint runs/bn/checkpoint.safetensors \\
      --checkpoint runs/ln/checkpoint.safetensors --data cifar10 --out bn-vs-ln --names BN,LN
  (writes OUT/diff.html, one self-contained page, and OUT/diff.json)"""
EXPORT_EXAMPLE = """example:
  camlens export --checkpoint runs/r18/checkpoint.safetensors --out model-fp16.safetensors"""
REPORT_EXAMPLE = """example:
  camlens report --model shipped --data sample --out report        # offline, bundled
  camlens report --model mynet.py:make --weights mynet.pt --mean 0.5,0.5,0.5 --std 0.25,0.25,0.25 \\
      --data my-images --out my-report     # my-images/{train,test}/<class>/
  camlens report --model timm:resnet18 --weights r18.safetensors --data my-images --out r
  (no --layer: the last layer before the global pooling, printed; camlens summary --model lists
  the others)"""
SUMMARY_EXAMPLE = """example:
  camlens summary                      # the standard ResNet18, batch norm
  camlens summary --norm layer
  camlens summary --checkpoint runs/quick/checkpoint.safetensors
  camlens summary --model mynet.py:make --classes 5 --image-size 64  # + where maps come from"""


# the same words wherever a flag appears: the same flag means the same thing in every command
LIMIT_HELP = "explain at most N mistakes, the first in sort order (pair statistics use all)"


def _command(name: str) -> typing.Callable[[argparse.Namespace], int]:
    """`commands.<name>`, imported when the command runs: it imports torch, --help does not."""

    def run(args: argparse.Namespace) -> int:
        from camlens.cli import commands

        return getattr(commands, name)(args)

    return run


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


def _data_flags(parser: argparse.ArgumentParser, image_size: bool | None = True) -> None:
    """`image_size` None: --image-size defaults to what the model states (the --model commands)."""
    parser.add_argument(
        "--data",
        required=True,
        help="cifar10 | a folder with train/ and test/ | cifar-10-batches-py | a .tar.gz of either",
    )
    if image_size:
        parser.add_argument(
            "--image-size", type=int, default=32, help="images are resized to this (default: 32)"
        )
    elif image_size is None:
        parser.add_argument(
            "--image-size",
            type=int,
            help="images are resized to this (default: what the model states, else the size "
            "of the data's first test image)",
        )
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bars"
    )


def _checkpoint_flag(parser: argparse.ArgumentParser, required: bool = True) -> None:
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


def _wandb_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wandb",
        action="store_true",
        help="also log to Weights & Biases (pip install 'camlens[wandb]'): files in OUT/wandb, "
        "offline without an API key (then `wandb sync` uploads it); resume continues the run",
    )
    parser.add_argument("--wandb-project", default="camlens", help="W&B project (default: camlens)")


def _eval_batch_flag(parser: argparse.ArgumentParser) -> None:
    field = {f.name: f for f in dataclasses.fields(TrainConfig)}["eval_batch_size"]
    parser.add_argument(
        "--eval-batch-size",
        type=int,
        default=field.default,
        help=f"{field.metadata['help']} (default: {field.default})",
    )


def _compare_flag(parser: argparse.ArgumentParser) -> None:
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


def _device_flag(parser: argparse.ArgumentParser, backend: bool = False) -> None:
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


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("names nothing")
    return names


def _methods(text: str) -> list[str]:
    names = _names(text)
    for name in names:
        if name not in METHOD_NAMES:
            raise argparse.ArgumentTypeError(
                f"unknown {name!r}: choose from {', '.join(METHOD_NAMES)}"
            )
    return names


def _explain_flags(
    parser: argparse.ArgumentParser,
    layer: str | None,
    precision: bool = True,
    method: str = "gradcam",
    counterfactual: bool = True,
) -> None:
    """The CAM flags, the same in every command that explains; `counterfactual`: the command
    explains mistakes for a gallery or report, which may carry the counterfactual test."""
    parser.add_argument(
        "--method",
        type=_methods,
        default=method.split(","),
        help=f"CAM method(s), comma-separated, of {', '.join(METHOD_NAMES)}; one gallery per "
        f"method in OUT/gallery/METHOD (default: {method})",
    )
    parser.add_argument(
        "--layer",
        type=_names,
        default=layer.split(",") if layer else None,
        help="dotted layer name(s), comma-separated (default: "
        + (
            layer
            or "layer4 of a camlens model, else the last layer before the global pooling; "
            "`camlens summary --model SPEC` lists them"
        )
        + "); every method gives a map per layer: refinecam's is refined by the layers named "
        "after it, and fullgrad and guidedgradcam (maps at the image's size) read the layer as "
        "where their layer part stops: the bias terms up to it (fullgrad), its Grad-CAM "
        "(guidedgradcam)",
    )
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
            "--counterfactual",
            action=argparse.BooleanOptionalAction,
            default=plan.counterfactual,
            help="the counterfactual test of each mistake: remove the top of its contrast map "
            "and of a random map, ask the model again; index.csv's cf* columns, a verdict line "
            f"on each card and in the report (default: {'on' if plan.counterfactual else 'off'})",
        )
    parser.add_argument(
        "--cam-batch-size",
        type=int,
        default=plan.cam_batch_size,
        help=f"images per CAM batch (default: {plan.cam_batch_size})",
    )
    if precision:
        parser.add_argument(
            "--precision",
            choices=PRECISION_NAMES,
            default=plan.precision,
            help=f"bf16: autocast the CAM forward pass, maps stay fp32 (default: {plan.precision})",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="camlens", description="Where a CNN looks when it gets an image wrong."
    )
    parser.add_argument("--version", action="version", version=f"camlens {__version__}")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser
    )
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser(
        "demo",
        help="offline: explain the shipped model's mistakes on the bundled sample",
        epilog=DEMO_EXAMPLE,
        formatter_class=fmt,
    )
    p.add_argument("--out", type=Path, default=Path("camlens-demo"), help="default: camlens-demo")
    _explain_flags(p, layer="layer3,layer4")
    p.add_argument(
        "--compare-norms",
        action="store_true",
        help="also put the two shipped models (batch norm, layer norm) side by side, as "
        "`camlens diff` does, into OUT/diff/diff.html",
    )
    _device_flag(p)
    p.set_defaults(run=_command("cmd_demo"), progress=True)

    p = sub.add_parser(
        "run",
        help="train, evaluate, explain the mistakes and write the report, in one go",
        epilog=RUN_EXAMPLE,
        formatter_class=fmt,
    )
    _data_flags(p)
    p.add_argument("--out", required=True, type=Path, help="run folder; resumed when it exists")
    p.add_argument("--tensorboard", action="store_true", help="also log to OUT/tensorboard")
    _wandb_flags(p)
    _compare_flag(p)
    p.add_argument(
        "--limit",
        type=int,
        default=1000,
        help=f"{LIMIT_HELP} (default: 1000, so that a briefly trained model does not make a "
        "100 MB page)",
    )
    # --precision is the training's here (TrainConfig), so the maps of a run stay fp32
    _explain_flags(p, layer="layer3,layer4", precision=False)
    _device_flag(p, backend=True)
    add_config_flags(p, TrainConfig)
    p.set_defaults(run=_command("cmd_run"))

    p = sub.add_parser(
        "train",
        help="train a ResNet18, checkpoint every epoch",
        epilog=TRAIN_EXAMPLE,
        formatter_class=fmt,
    )
    _data_flags(p)
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        help="run folder (checkpoints, metrics.jsonl, curves.png)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--tensorboard", action="store_true", help="also log to OUT/tensorboard")
    _wandb_flags(p)
    _device_flag(p, backend=True)
    add_config_flags(p, TrainConfig)
    p.set_defaults(run=_command("cmd_train"))

    p = sub.add_parser(
        "evaluate",
        help="test accuracy, confusion matrix, misclassified.csv",
        epilog=EVALUATE_EXAMPLE,
        formatter_class=fmt,
    )
    _checkpoint_flag(p)
    _data_flags(p, image_size=None)
    p.add_argument("--out", required=True, type=Path, help="folder for the evaluation files")
    p.add_argument("--tta", action="store_true", help="average each image with its mirror image")
    _eval_batch_flag(p)
    _device_flag(p, backend=True)
    p.set_defaults(run=_command("cmd_evaluate"))

    p = sub.add_parser(
        "explain",
        help="Grad-CAM (and family) gallery of the misclassified test images",
        epilog=EXPLAIN_EXAMPLE,
        formatter_class=fmt,
    )
    _checkpoint_flag(p, required=False)  # or --over-epochs RUN, which names the model
    _data_flags(p, image_size=None)
    p.add_argument(
        "--out", required=True, type=Path, help="folder; galleries go in OUT/gallery/METHOD"
    )
    p.add_argument(
        "--over-epochs",
        type=Path,
        metavar="RUN",
        help="instead of a gallery: the final model of run folder RUN, its most confident "
        "mistakes (--limit, default 16) explained at every epoch kept by `train --keep-every`, "
        "into OUT/over-epochs.png and .json (first --method and last --layer)",
    )
    _explain_flags(p, layer=None)
    p.add_argument("--limit", type=int, help=f"{LIMIT_HELP} (default: all)")
    p.add_argument("--sort", default="confidence", choices=SORTS, help="default: confidence")
    # --true: the flag's name before one name per concept; kept so that old scripts still run
    p.add_argument("--label", "--true", metavar="CLASS", help="only images of this true class")
    p.add_argument("--pred", metavar="CLASS", help="only images predicted as this class")
    p.add_argument("--misclassified", type=Path, help="misclassified.csv from camlens evaluate")
    _device_flag(p, backend=True)
    p.set_defaults(run=_command("cmd_explain"))

    p = sub.add_parser(
        "compare",
        help="can these maps be trusted? faithfulness of each method and layer vs baselines",
        epilog=COMPARE_EXAMPLE,
        formatter_class=fmt,
    )
    _checkpoint_flag(p)
    _data_flags(p, image_size=None)
    p.add_argument("--out", required=True, type=Path, help="folder for the four files")
    # default layers: layer3,layer4 for a camlens model (cmd_compare), else the picked one
    # default methods: those that fit minutes on 2 CPU cores; the costly ones on request
    _explain_flags(
        p, layer=None, precision=False, method=",".join(COMPARE_METHODS), counterfactual=False
    )
    p.add_argument(
        "--limit",
        type=int,
        default=COMPARE_LIMIT,
        help="score at most N mistakes (the most confident) and as many correct images "
        f"(a seeded sample) per method and layer (default: {COMPARE_LIMIT}; the estimate is "
        "printed first, each method's sanity state and the paired verdicts last)",
    )
    p.add_argument(
        "--top-k",
        type=int,
        help="Score-CAM keeps each image's K highest-variance channels (Faster Score-CAM): "
        "all channels cost ~2 s per image per layer on 2 CPU cores; 0: all; an error when "
        "no --method reads it (default: 32)",
    )
    _eval_batch_flag(p)
    p.add_argument("--seed", type=int, default=0, help="correct-image sample, baselines, ROAD")
    g = p.add_argument_group(
        "grid test",
        "n x n confident correct images of distinct classes in one input: does "
        "each class's map fall in its tile? (camlens.metrics.grid; its line is printed first)",
    )
    g.add_argument(
        "--grid",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the grid localisation test (default: on)",
    )
    add_config_flags(g, GridConfig, prefix="grid_")
    _device_flag(p, backend=True)
    p.set_defaults(run=_command("cmd_compare"))

    p = sub.add_parser(
        "diff",
        help="two models side by side: shared and own mistakes, do their maps agree?",
        epilog=DIFF_EXAMPLE,
        formatter_class=fmt,
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        action="append",
        type=Path,
        help="give it twice: model A, then model B (a checkpoint or `shipped`, `shipped-layer`)",
    )
    _data_flags(p, image_size=False)
    p.add_argument("--out", required=True, type=Path, help="folder for diff.html and diff.json")
    p.add_argument(
        "--names",
        type=_names,
        help="the two models' names on the page, e.g. BN,LN "
        "(default: their norms when they differ, else the checkpoints)",
    )
    _explain_flags(p, layer="layer3,layer4", precision=False, counterfactual=False)
    p.add_argument(
        "--limit", type=int, default=24, help="cards per group on the page (default: 24)"
    )
    _device_flag(p)
    p.set_defaults(run=_command("cmd_diff"))

    p = sub.add_parser(
        "report",
        help="a trained model's report: evaluate, explain the mistakes, gallery + report.html",
        epilog=REPORT_EXAMPLE,
        formatter_class=fmt,
    )
    _checkpoint_flag(p)
    _data_flags(p, image_size=None)
    p.add_argument("--out", required=True, type=Path, help="folder for eval/, gallery/, report")
    _explain_flags(p, layer=None)
    p.add_argument("--limit", type=int, help=f"{LIMIT_HELP} (default: all)")
    _compare_flag(p)
    _eval_batch_flag(p)
    _device_flag(p)
    p.set_defaults(run=_command("cmd_report"))

    p = sub.add_parser(
        "export",
        help="re-save a checkpoint, e.g. in half precision",
        epilog=EXPORT_EXAMPLE,
        formatter_class=fmt,
    )
    p.add_argument("--checkpoint", required=True, type=Path, help="checkpoint.safetensors to read")
    p.add_argument(
        "--out", required=True, type=Path, help="the new .safetensors (its .json beside)"
    )
    # commands.DTYPES's keys: the names of the precisions
    p.add_argument("--dtype", default="fp16", choices=sorted(PRECISION_NAMES), help="default: fp16")
    p.set_defaults(run=_command("cmd_export"))

    p = sub.add_parser(
        "summary",
        help="layer names, output shapes and parameters",
        epilog=SUMMARY_EXAMPLE,
        formatter_class=fmt,
    )
    _checkpoint_flag(p, required=False)
    p.add_argument("--norm", default="batch", choices=("batch", "layer", "group"))
    p.add_argument("--classes", type=int, help="default: the --weights' head's count, else 10")
    p.add_argument("--image-size", type=int, help="default: what the model states, else 32")
    p.set_defaults(run=_command("cmd_summary"))
    return parser
