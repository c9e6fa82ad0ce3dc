"""The subcommands: each `cmd_*` is a few calls to the public API, then a line or two printed.

Each takes the parsed `argparse.Namespace` and returns an exit code; user errors are raised by
the library as the exceptions in `camlens.cli.USER_ERRORS`, which `main` turns into one line
on stderr. The pipeline itself lives in `camlens.pipeline`, where the notebook calls it too.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from camlens.compare import compare
from camlens.data import load_dataset
from camlens.evaluate import evaluate, read_mistakes, write_evaluation
from camlens.model import ResNet18, load_checkpoint, save_checkpoint, summary
from camlens.pipeline import Outcome, demo, load_matching_data, run, write_galleries
from camlens.train import RunError, TrainConfig, tensorboard_logger, train

__all__ = [
    "DTYPES",
    "cmd_compare",
    "cmd_demo",
    "cmd_evaluate",
    "cmd_explain",
    "cmd_export",
    "cmd_run",
    "cmd_summary",
    "cmd_train",
    "config_from_args",
    "flag_name",
    "pick_device",
]

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def flag_name(field: str) -> str:
    """The command-line flag of a config field: `eval_batch_size` -> `--eval-batch-size`."""
    return "--" + field.replace("_", "-")


def config_from_args(args: argparse.Namespace, config_type):
    """The config dataclass from its flags; its validation error names the flag, not the field."""
    names = [f.name for f in dataclasses.fields(config_type)]
    try:
        return config_type(**{name: getattr(args, name) for name in names})
    except ValueError as e:  # the dataclass validates its fields: "<field> must ..., got ..."
        message = str(e)
        field = next((n for n in names if message.startswith(n + " ")), None)
        if field is not None:
            message = flag_name(field) + message[len(field) :]
        raise RunError(message) from None


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


def cmd_evaluate(args: argparse.Namespace) -> int:
    model, meta = load_checkpoint(args.checkpoint, pick_device(args.device))
    data = load_matching_data(args.data, meta, progress=args.progress)
    ev = evaluate(model, data.test, batch_size=args.eval_batch_size, tta=args.tta)
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
    model, meta = load_checkpoint(args.checkpoint, pick_device(args.device))
    data = load_matching_data(args.data, meta, progress=args.progress)
    mistakes = None
    if args.misclassified is not None:
        mistakes = read_mistakes(args.misclassified, data.test)
    galleries = write_galleries(
        model,
        data,
        args.out,
        mistakes=mistakes,
        sort=args.sort,
        label_name=args.label,
        pred_name=args.pred,
        limit=args.limit,
        methods=args.method,
        layers=args.layer,
        cam_batch_size=args.cam_batch_size,
        precision=args.precision,
        progress=args.progress,
    )
    if not galleries.explanations:
        print("no misclassified images match: nothing to explain")
        return 0
    expl = next(iter(galleries.explanations.values()))
    resolutions = ", ".join(
        f"{n} {h}x{w}" for n, (h, w) in zip(expl.layers, expl.resolutions, strict=True)
    )
    print(
        f"explained {len(galleries.mistakes)} misclassified images with "
        f"{', '.join(galleries.explanations)} ({resolutions} maps)"
    )
    for folder in galleries.folders.values():
        print(f"gallery: {folder}/pages, cards/, pairs/ and index.csv")
    return 0


def _print_outcome(outcome: Outcome) -> None:
    for folder in outcome.galleries.folders.values():
        print(f"gallery: {folder}")
    print(f"report: {outcome.report}")


def cmd_demo(args: argparse.Namespace) -> int:
    outcome = demo(
        args.out,
        device=pick_device(args.device),
        methods=args.method,
        layers=args.layer,
        cam_batch_size=args.cam_batch_size,
        precision=args.precision,
    )
    ev = outcome.evaluation
    print(
        f"shipped ResNet18 on the bundled sample: {ev.accuracy:.2%} accuracy, "
        f"{len(ev.mistakes)} misclassified, explained in {outcome.seconds:.0f}s"
    )
    _print_outcome(outcome)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    config = config_from_args(args, TrainConfig)
    data = load_dataset(args.data, image_size=args.image_size, progress=args.progress)
    outcome = run(
        config,
        data,
        args.out,
        device=pick_device(args.device),
        methods=args.method,
        layers=args.layer,
        limit=args.limit,
        cam_batch_size=args.cam_batch_size,
        progress=args.progress,
        tensorboard=args.tensorboard,
        compare_limit=args.compare,
    )
    ev, shown = outcome.evaluation, len(outcome.galleries.mistakes)
    note = "" if shown == len(ev.mistakes) else f" ({shown} shown)"
    print(
        f"test accuracy {ev.accuracy:.2%}; {len(ev.mistakes)} misclassified{note}; "
        f"done in {outcome.seconds:.0f}s"
    )
    print(f"evaluation: {args.out / 'eval'}")
    if args.compare is not None:
        print(f"compare: {args.out / 'compare.csv'}, compare.png, sanity.png")
    _print_outcome(outcome)
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


def cmd_compare(args: argparse.Namespace) -> int:
    model, meta = load_checkpoint(args.checkpoint, pick_device(args.device))
    data = load_matching_data(args.data, meta, progress=args.progress)
    result = compare(
        model,
        data,
        args.out,
        methods=args.method,
        layers=args.layer,
        limit=args.limit,
        top_k=args.top_k or None,
        cam_batch_size=args.cam_batch_size,
        eval_batch_size=args.eval_batch_size,
        seed=args.seed,
    )
    failed = [m for m, s in result.sanity.items() if not s["passed"]]
    for (method, layer), why in result.skipped.items():
        print(f"left out {method} at {layer}: {why}")
    print(f"scored {len(result.rows)} (method, layer, subset, metric) cells")
    print("sanity check: " + (f"FAILED by {', '.join(failed)}" if failed else "all pass"))
    print("wrote " + ", ".join(str(p) for p in result.files.values()))
    return 0
