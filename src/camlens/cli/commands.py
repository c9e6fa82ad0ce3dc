"""The subcommands: each `cmd_*` is a few calls to the public API, then a line or two printed.

Each takes the parsed `argparse.Namespace` and returns an exit code; user errors are raised as
the exceptions in `camlens.cli.USER_ERRORS`, which `main` turns into one line on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from camlens.cam import METHODS
from camlens.data import DataError, load_dataset
from camlens.evaluate import evaluate, find_mistakes, predict, read_mistakes, write_evaluation
from camlens.gallery import explain_mistakes, select_mistakes, write_gallery
from camlens.model import ResNet18, load_checkpoint, save_checkpoint, summary
from camlens.report import compute_report, render_report
from camlens.train import RunError, TrainConfig, tensorboard_logger, train

__all__ = [
    "DTYPES",
    "cmd_demo",
    "cmd_evaluate",
    "cmd_explain",
    "cmd_export",
    "cmd_run",
    "cmd_summary",
    "cmd_train",
    "config_from_args",
    "load_matching_data",
    "pick_device",
]

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


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


def _names(text: str, what: str, valid=None) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise DataError(f"--{what} names nothing")
    for name in names if valid is not None else ():
        if name not in valid:
            raise DataError(f"unknown --{what} {name!r}: choose from {', '.join(valid)}")
    return names


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
    layers = _names(args.layer, "layer")
    amp = torch.bfloat16 if args.amp == "bf16" else None
    try:
        expl = explain_mistakes(
            model,
            chosen.images,
            chosen.labels,
            args.method,
            layers,
            args.batch_size,
            amp,
            preds=chosen.preds,  # from misclassified.csv they may be TTA predictions
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


def _report_and_gallery(
    model, data, out: Path, args, run_info: dict, history, limit=None, evaluation=None
):
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
            evaluation=evaluation,
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
        "trained on": meta["device"],
        "train_seconds": meta["train_seconds"],
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
        "trained on": meta["device"],
        "train_seconds": meta["train_seconds"],
        "recipe": _recipe(meta),
    }
    run_info["data_label"] = data.label
    report, path = _report_and_gallery(
        model, data, args.out, args, run_info, history, args.limit, evaluation=ev
    )
    shown = "" if len(report.mistakes) == len(ev.mistakes) else f" ({len(report.mistakes)} shown)"
    print(
        f"test accuracy {ev.accuracy:.2%}; {len(ev.mistakes)} misclassified{shown}; "
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
