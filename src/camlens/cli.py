"""The `camlens` command: argparse wiring only. Parse, call the public API, print, exit code.

User errors (a missing file, a bad flag value, a checkpoint for another model) end as one line
on stderr and exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import types
import typing
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from camlens import __version__
from camlens.cam import METHODS
from camlens.data import DataError, load_dataset
from camlens.download import DownloadError
from camlens.evaluate import evaluate, find_mistakes, predict, read_mistakes, write_evaluation
from camlens.gallery import SORTS, explain_mistakes, select_mistakes, write_gallery
from camlens.model import CheckpointError, ResNet18, load_checkpoint, save_checkpoint, summary
from camlens.report import compute_report, render_report
from camlens.train import RunError, TrainConfig, tensorboard_logger, train

USER_ERRORS: tuple[type[BaseException], ...] = (
    DataError,
    DownloadError,
    CheckpointError,
    RunError,
    FileNotFoundError,
)

DEMO_EXAMPLE = """example:
  camlens demo                          # offline: shipped model, bundled sample -> report.html
  camlens demo --out /tmp/demo --method gradcam,gradcam++"""
RUN_EXAMPLE = """example:
  camlens run --data ../shared/data/cifar10-jpeg.tar.gz --out runs/quick --epochs 1 --subset 2000
  camlens run --data cifar10 --out runs/r18 --epochs 30 --layer layer3,layer4
  (run it again after a kill: it resumes training, then redoes the later steps)"""
TRAIN_EXAMPLE = """example:
  camlens train --data ../shared/data/cifar10-jpeg.tar.gz --out runs/quick --epochs 1 --subset 2000
  camlens train --data cifar10 --out runs/r18 --epochs 30           # official batches, downloaded
  camlens train --data cifar10 --out runs/r18 --epochs 30 --resume  # continue a killed run"""
EVALUATE_EXAMPLE = """example:
  camlens evaluate --checkpoint runs/quick/checkpoint.safetensors \\
      --data ../shared/data/cifar10-jpeg.tar.gz --out runs/quick/eval"""
EXPLAIN_EXAMPLE = """example:
  camlens explain --checkpoint runs/quick/checkpoint.safetensors \\
      --data ../shared/data/cifar10-jpeg.tar.gz --out runs/quick/explain --layer layer3,layer4
  camlens explain ... --method gradcam++ --true cat --pred dog --limit 50"""
EXPORT_EXAMPLE = """example:
  camlens export --checkpoint runs/r18/checkpoint.safetensors --out model-fp16.safetensors"""
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
SUMMARY_EXAMPLE = """example:
  camlens summary                      # the standard ResNet18, batch norm
  camlens summary --norm layer
  camlens summary --checkpoint runs/quick/checkpoint.safetensors"""


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


def add_config_flags(parser: argparse.ArgumentParser, config_type) -> None:
    """One flag per dataclass field: the defaults and help live only in the dataclass."""
    hints = typing.get_type_hints(config_type)
    for f in dataclasses.fields(config_type):
        flag = "--" + f.name.replace("_", "-")
        tp = _field_type(hints[f.name])
        help_text = f"{f.metadata.get('help', '')} (default: {f.default})"
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


def config_from_args(args: argparse.Namespace, config_type):
    try:
        return config_type(
            **{f.name: getattr(args, f.name) for f in dataclasses.fields(config_type)}
        )
    except ValueError as e:  # the dataclass validates its own fields
        raise RunError(str(e).replace("_", "-")) from None


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RunError(
            "--device cuda asked for, but this torch build sees no CUDA GPU: use --device cpu"
        )
    try:
        return torch.device(name)
    except RuntimeError:
        raise RunError(f"unknown --device {name!r}: use auto, cpu, cuda or cuda:N") from None


def _data_flags(parser: argparse.ArgumentParser, image_size: bool = True) -> None:
    parser.add_argument(
        "--data",
        required=True,
        help="cifar10 | a folder with train/ and test/ | cifar-10-batches-py | a .tar.gz of either",
    )
    if image_size:
        parser.add_argument(
            "--image-size", type=int, default=32, help="images are resized to this (default: 32)"
        )
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bars"
    )


def _checkpoint_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        required=True,
        type=Path,
        help="checkpoint.safetensors (its .json beside it), or `shipped` for the bundled model",
    )


def _device_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ..."
    )


def _explain_flags(parser: argparse.ArgumentParser, method: str) -> None:
    parser.add_argument(
        "--method", default=method, help=f"CAM method(s), comma-separated, of {', '.join(METHODS)}"
    )
    parser.add_argument("--layer", default="layer3,layer4", help="layer(s), comma-separated")
    parser.add_argument("--cam-batch-size", type=int, default=64, help="images per CAM batch")


def _names(text: str, what: str, valid=None) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise DataError(f"--{what} names nothing")
    for name in names if valid is not None else ():
        if name not in valid:
            raise DataError(f"unknown --{what} {name!r}: choose from {', '.join(valid)}")
    return names


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
    _explain_flags(p, method="gradcam")
    _device_flag(p)
    p.set_defaults(run=cmd_demo, progress=True)

    p = sub.add_parser(
        "run",
        help="train, evaluate, explain the mistakes and write the report, in one go",
        epilog=RUN_EXAMPLE,
        formatter_class=fmt,
    )
    _data_flags(p)
    p.add_argument("--out", required=True, type=Path, help="run folder; resumed when it exists")
    p.add_argument("--tensorboard", action="store_true", help="also log to OUT/tensorboard")
    p.add_argument("--limit", type=int, help="explain at most this many mistakes")
    _explain_flags(p, method="gradcam")
    _device_flag(p)
    add_config_flags(p, TrainConfig)
    p.set_defaults(run=cmd_run)

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
    _device_flag(p)
    add_config_flags(p, TrainConfig)
    p.set_defaults(run=cmd_train)

    p = sub.add_parser(
        "evaluate",
        help="test accuracy, confusion matrix, misclassified.csv",
        epilog=EVALUATE_EXAMPLE,
        formatter_class=fmt,
    )
    _checkpoint_flag(p)
    _data_flags(p, image_size=False)
    p.add_argument("--out", required=True, type=Path, help="folder for the evaluation files")
    p.add_argument("--tta", action="store_true", help="average each image with its mirror image")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default: 64)")
    _device_flag(p)
    p.set_defaults(run=cmd_evaluate)

    p = sub.add_parser(
        "explain",
        help="Grad-CAM (and family) gallery of the misclassified test images",
        epilog=EXPLAIN_EXAMPLE,
        formatter_class=fmt,
    )
    _checkpoint_flag(p)
    _data_flags(p, image_size=False)
    p.add_argument(
        "--out", required=True, type=Path, help="folder; the gallery goes in OUT/gallery"
    )
    p.add_argument("--method", default="gradcam", choices=sorted(METHODS), help="default: gradcam")
    p.add_argument("--layer", default="layer4", help="dotted layer name(s), comma-separated")
    p.add_argument("--limit", type=int, help="explain at most this many images")
    p.add_argument("--sort", default="confidence", choices=SORTS, help="default: confidence")
    p.add_argument("--true", metavar="CLASS", help="only images of this true class")
    p.add_argument("--pred", metavar="CLASS", help="only images predicted as this class")
    p.add_argument("--misclassified", type=Path, help="misclassified.csv from camlens evaluate")
    p.add_argument("--batch-size", type=int, default=64, help="images per CAM batch (default: 64)")
    p.add_argument("--amp", choices=("bf16",), help="bf16 autocast forward (maps stay fp32)")
    _device_flag(p)
    p.set_defaults(run=cmd_explain)

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
    p.add_argument("--dtype", default="fp16", choices=sorted(DTYPES), help="default: fp16")
    p.set_defaults(run=cmd_export)

    p = sub.add_parser(
        "summary",
        help="layer names, output shapes and parameters",
        epilog=SUMMARY_EXAMPLE,
        formatter_class=fmt,
    )
    p.add_argument("--checkpoint", type=Path, help="describe this checkpoint's model")
    p.add_argument("--norm", default="batch", choices=("batch", "layer", "group"))
    p.add_argument("--classes", type=int, default=10, help="number of classes (default: 10)")
    p.add_argument("--image-size", type=int, default=32)
    p.set_defaults(run=cmd_summary)
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    config = config_from_args(args, TrainConfig)
    device = pick_device(args.device)
    data = load_dataset(args.data, image_size=args.image_size, progress=args.progress)
    on_epoch = tensorboard_logger(args.out) if args.tensorboard else None
    train(
        config,
        data,
        args.out,
        device=device,
        resume=args.resume,
        progress=args.progress,
        on_epoch=on_epoch,
    )
    print(f"checkpoint: {args.out / 'checkpoint.safetensors'}")
    return 0


def load_matching_data(args: argparse.Namespace, meta: dict):
    """The data a checkpoint is evaluated on must have the classes it was trained on."""
    data = load_dataset(args.data, image_size=int(meta["image_size"]), progress=args.progress)
    if list(data.classes) != list(meta["classes"]):
        raise DataError(
            f"{args.data} has classes {list(data.classes)}, but the checkpoint was trained on "
            f"{meta['classes']}: pass the data it was trained on"
        )
    return data


def cmd_evaluate(args: argparse.Namespace) -> int:
    model, meta = load_checkpoint(args.checkpoint, pick_device(args.device))
    data = load_matching_data(args, meta)
    ev = evaluate(model, data.test, batch_size=args.batch_size, tta=args.tta)
    info = {"checkpoint": str(args.checkpoint), "data": data.source, "tta": args.tta}
    write_evaluation(ev, data.classes, args.out, info)
    print(
        f"test accuracy {ev.accuracy:.2%} (loss {ev.loss:.4f}) on {len(data.test)} images; "
        f"{len(ev.mistakes)} misclassified"
    )
    worst = sorted(zip(ev.per_class, data.classes, strict=False))[:3]
    print("weakest classes: " + ", ".join(f"{c} {a:.1%}" for a, c in worst))
    print(f"wrote {args.out}/misclassified.csv, confusion.png, confusion.csv, metrics.json")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    model, meta = load_checkpoint(args.checkpoint, pick_device(args.device))
    data = load_matching_data(args, meta)
    if args.misclassified is not None:
        mistakes = read_mistakes(args.misclassified, data.test)
    else:
        logits = predict(model, data.test.images, args.batch_size)
        mistakes = find_mistakes(logits, data.test.labels)
        mistakes = replace(mistakes, images=data.test.images[mistakes.indices])
    try:
        chosen = select_mistakes(
            mistakes, data.classes, args.sort, args.true, args.pred, args.limit
        )
    except ValueError as e:
        raise DataError(str(e)) from None
    if not len(chosen):
        print("no misclassified images match: nothing to explain")
        return 0
    layers = [name.strip() for name in args.layer.split(",") if name.strip()]
    amp = torch.bfloat16 if args.amp == "bf16" else None
    try:
        expl = explain_mistakes(
            model, chosen.images, chosen.labels, args.method, layers, args.batch_size, amp
        )
    except KeyError as e:  # an unknown layer: the message lists the valid names
        raise DataError(str(e.args[0])) from None
    root = write_gallery(expl, chosen, data.classes, args.out)
    resolutions = ", ".join(
        f"{n} {h}x{w}" for n, (h, w) in zip(expl.layers, expl.resolutions, strict=True)
    )
    print(
        f"explained {len(chosen)} misclassified images with {args.method} ({resolutions} maps) "
        f"in {time.perf_counter() - started:.1f}s"
    )
    print(f"gallery: {root}/pages, cards/, pairs/ and index.csv")
    return 0


def _report_and_gallery(model, data, out: Path, args, run_info: dict, history, limit=None):
    """Explain the mistakes once; the gallery and the report both draw from that."""
    methods = _names(args.method, "method", list(METHODS))
    layers = _names(args.layer, "layer")
    try:
        report = compute_report(
            model,
            data.test,
            data.classes,
            run_info=run_info,
            history=history,
            methods=methods,
            layers=layers,
            batch_size=args.cam_batch_size,
            limit=limit,
        )
    except KeyError as e:  # an unknown layer: the message lists the valid names
        raise DataError(str(e.args[0])) from None
    if methods[0] in report.explanations:
        write_gallery(report.explanations[methods[0]], report.mistakes, data.classes, out)
    return report, render_report(report, out)


def cmd_demo(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    model, meta = load_checkpoint("shipped", pick_device(args.device))
    data = load_dataset("sample", progress=False)
    run_info = {
        "checkpoint": "shipped with camlens (camlens/assets/resnet18-cifar10-jpeg)",
        "data": "1,000-image sample of the test split (100 per class), bundled with camlens",
        "data_label": "CIFAR-10 (JPEG q75), 1,000-image test sample",
        "epochs": meta["epochs"],
        "trained on": f"{meta['device']} in {meta['train_seconds']:.0f} s",
        "training images": meta["train_images"],
        "full test accuracy": f"{meta['evaluation']['test_acc']:.2%} (10,000 images)",
        "recipe": _recipe(meta),
    }
    report, path = _report_and_gallery(model, data, args.out, args, run_info, meta.get("history"))
    ev = report.evaluation
    print(
        f"shipped ResNet18 on the bundled sample: {ev.accuracy:.2%} accuracy, "
        f"{len(ev.mistakes)} misclassified, explained in {time.perf_counter() - started:.0f}s"
    )
    print(f"gallery: {args.out / 'gallery'}")
    print(f"report: {path}")
    return 0


def _recipe(meta: dict) -> str:
    r = meta.get("recipe", {})
    keys = ("epochs", "batch_size", "lr", "weight_decay", "label_smoothing", "precision")
    return ", ".join(f"{k} {r[k]}" for k in keys if k in r)


def cmd_run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    config = config_from_args(args, TrainConfig)
    _names(args.method, "method", list(METHODS))  # fail before hours of training, not after
    device = pick_device(args.device)
    data = load_dataset(args.data, image_size=args.image_size, progress=args.progress)
    resume = (args.out / "resume.safetensors").exists()
    on_epoch = tensorboard_logger(args.out) if args.tensorboard else None
    train(
        config,
        data,
        args.out,
        device=device,
        resume=resume,
        progress=args.progress,
        on_epoch=on_epoch,
    )
    model, meta = load_checkpoint(args.out / "checkpoint.safetensors", device)
    ev = evaluate(model, data.test, batch_size=args.eval_batch_size)
    write_evaluation(ev, data.classes, args.out / "eval", {"checkpoint": str(args.out)})
    history = [json.loads(line) for line in (args.out / "metrics.jsonl").read_text().splitlines()]
    run_info = {
        "checkpoint": str(args.out / "checkpoint.safetensors"),
        "data": data.source,
        "epochs": meta["epoch"],
        "train time": f"{meta['train_seconds']:.0f} s on {meta['device']}",
        "recipe": _recipe(meta),
    }
    run_info["data_label"] = data.label
    _, path = _report_and_gallery(model, data, args.out, args, run_info, history, args.limit)
    print(
        f"test accuracy {ev.accuracy:.2%}; {len(ev.mistakes)} misclassified; "
        f"done in {time.perf_counter() - started:.0f}s"
    )
    print(f"evaluation: {args.out / 'eval'}  gallery: {args.out / 'gallery'}")
    print(f"report: {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    model, meta = load_checkpoint(args.checkpoint)
    path = save_checkpoint(
        model, args.out, {**meta, "weights_dtype": args.dtype}, DTYPES[args.dtype]
    )
    print(f"wrote {path} and {path.with_suffix('.json')}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    if args.checkpoint is not None:
        model, meta = load_checkpoint(args.checkpoint)
        image_size = int(meta["image_size"])
    else:
        model, image_size = ResNet18(args.classes, args.norm), args.image_size
    print(summary(model, image_size))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except USER_ERRORS as e:
        print(f"camlens: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("camlens: interrupted (a training run continues with --resume)", file=sys.stderr)
        return 130
