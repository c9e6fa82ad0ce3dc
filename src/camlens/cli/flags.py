"""The flags several commands share, each defined once: the same flag means the same thing in
every command. `add_config_flags` makes one flag per field of a config dataclass, so the
defaults live only in the dataclass (ExplainPlan, TrainConfig, GridConfig)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from pathlib import Path

from camlens.choices import BACKENDS
from camlens.plan import ExplainPlan

__all__ = [
    "OneLineParser",
    "add_checkpoint_flags",
    "add_config_flags",
    "add_data_flags",
    "add_device_flags",
    "add_explain_flags",
    "add_limit_flags",
    "add_plan_flags",
    "add_wandb_flags",
    "name_list",
]


def add_limit_flags(parser: argparse.ArgumentParser) -> None:
    """--limit N and --all: which mistakes a gallery and a report explain."""
    add_plan_flags(parser, ["limit"])
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
    """The runtime type behind an annotation such as `int | None` or `tuple[str, ...]`."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return _field_type(args[0])
    return tuple if typing.get_origin(tp) is tuple else tp


def _names_of(what: str, choices: typing.Sequence[str] | None):
    """A comma-separated list's type: each name checked against `choices`, in one line that
    says `what` it names (as the library's own error does: "unknown output 'pdf'")."""

    def parse(text: str) -> list[str]:
        names = name_list(text)
        for name in names:
            if choices is not None and name not in choices:
                raise argparse.ArgumentTypeError(
                    f"unknown {what} {name!r}: choose from {', '.join(choices)}"
                )
        return names

    return parse


def _shown(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


def add_config_flags(
    parser: argparse.ArgumentParser,
    config_type,
    prefix: str = "",
    only: typing.Sequence[str] | None = None,
    aliases: typing.Mapping[str, tuple[str, ...]] | None = None,
    **defaults,
) -> None:
    """One flag per dataclass field: the defaults and help live only in the dataclass.

    `prefix` goes before each flag and its dest: GridConfig's `n` is compare's --grid-n.
    `only`: these fields, in this order; `aliases`: more names for a field's flag in this
    command (an older name kept so that old scripts run); `defaults`: a command's own default
    for a field. A field's metadata may name the flag (`names`), the choices (of each item,
    for a list), what None means (`auto`), a `metavar`, and a `const` for a flag that may
    come bare."""
    found = {f.name: f for f in dataclasses.fields(config_type)}
    space = vars(sys.modules[config_type.__module__])  # the names its annotations use
    for name in only or list(found):
        f, meta = found[name], found[name].metadata
        names = meta.get("names", ("--" + (prefix + f.name).replace("_", "-"),))
        names = (*names, *(aliases or {}).get(name, ()))
        # only the fields asked for: ExplainPlan's `knobs` names a type that imports torch
        tp = _field_type(eval(f.type, space) if isinstance(f.type, str) else f.type)
        default = defaults.get(name, f.default)
        said = meta["auto"] if default is None and "auto" in meta else _shown(default)
        of = f", of {', '.join(meta['choices'])}" if tp is tuple and "choices" in meta else ""
        kw: dict = {
            "dest": prefix + f.name,
            "help": f"{meta.get('help', '')}{of} (default: {said})",
        }
        if tp is bool:
            kw.update(action=argparse.BooleanOptionalAction, default=default)
        elif tp is tuple:
            what = names[0].lstrip("-")
            kw.update(type=_names_of(what, meta.get("choices")), default=default, metavar="NAMES")
        else:
            kw.update(type=tp, default=default, choices=meta.get("choices"))
            if "choices" not in meta:
                kw["metavar"] = meta.get("metavar", f.name.upper())
            if "const" in meta:
                kw.update(nargs="?", const=meta["const"])
        parser.add_argument(*names, **kw)


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


def add_plan_flags(
    parser: argparse.ArgumentParser,
    names: list[str],
    aliases: typing.Mapping[str, tuple[str, ...]] | None = None,
    **defaults,
) -> None:
    """The flags of these ExplainPlan fields, built from the fields (`add_config_flags`):
    the same flag means the same thing in every command; `aliases` and `defaults`: a
    command's own."""
    add_config_flags(parser, ExplainPlan, only=names, aliases=aliases, **defaults)


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


def add_explain_flags(
    parser: argparse.ArgumentParser,
    layers: tuple[str, ...] | None = None,
    precision: bool | str = True,
    methods: tuple[str, ...] | None = None,
    counterfactual: bool = True,
) -> None:
    """The CAM flags, the same in every command that explains; `layers` and `methods` the
    command's defaults (None: the plan's); `counterfactual`: the command explains mistakes for
    a gallery or report (its outputs, chunks and counterfactual test); `precision`: "cam"
    where --precision is the training's (run): --cam-precision alone."""
    names = ["methods", "layers", "layout", "cam_batch_size"]
    names += ["outputs", "chunk_size", "counterfactual", "metric_seed"] if counterfactual else []
    own = {"layers": layers} | ({"methods": methods} if methods else {})
    # --precision too where the command trains nothing (in `run` it is the training's)
    aliases = {"cam_precision": ("--precision",)} if precision and precision != "cam" else {}
    add_plan_flags(parser, names + ["cam_precision"] * bool(precision), aliases, **own)
