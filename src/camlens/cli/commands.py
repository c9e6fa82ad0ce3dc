"""The subcommands: each `cmd_*` is a few calls to the public API, then a line or two printed.

Each takes the parsed `argparse.Namespace` and returns an exit code; user errors are raised by
the library as the exceptions in `camlens.cli.USER_ERRORS`, which `main` turns into one line
on stderr. The pipeline itself lives in `camlens.pipeline`, where the notebook calls it too.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from camlens.cam import candidate_layers, pick_layer
from camlens.choices import DEFAULT_LAYERS
from camlens.classifier import ModelConfig, Opened, build_classifier, open_model, stated_size
from camlens.compare import CompareConfig, compare, summary_of, with_top_k
from camlens.data import DataConfig, DataError, load_dataset
from camlens.distributed import is_writer, process_group
from camlens.epochs import explain_over_epochs
from camlens.evaluate import evaluate, read_mistakes, write_evaluation
from camlens.explain import ExplainError, ExplainPlan
from camlens.model import ResNet18, save_checkpoint, summary
from camlens.pipeline import (
    Outcome,
    choose_layers,
    demo,
    diff_checkpoints,
    explain_model,
    report_facts,
    run,
    write_galleries,
)
from camlens.plan import GridConfig
from camlens.train import Logs, RunError, TrainConfig, run_training

__all__ = [
    "DTYPES",
    "cmd_compare",
    "cmd_demo",
    "cmd_diff",
    "cmd_evaluate",
    "cmd_explain",
    "cmd_export",
    "cmd_report",
    "cmd_run",
    "cmd_summary",
    "cmd_train",
    "config_from_args",
    "flag_name",
    "pick_device",
    "plan_from_args",
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


# ExplainPlan field -> the flag that sets it, where the names differ (argparse dest)
def plan_from_args(args: argparse.Namespace, **fixed) -> ExplainPlan:
    """The ExplainPlan of the explain flags this command has (each flag's dest is its field,
    `add_plan_flags`); `fixed` wins over a flag."""
    names = [f.name for f in dataclasses.fields(ExplainPlan) if f.name != "cam"]
    given = {n: getattr(args, n) for n in names if hasattr(args, n)}
    return ExplainPlan(**{**given, **fixed})


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
    progress = args.progress and is_writer()
    data = load_dataset(args.data, image_size=args.image_size, progress=progress, train=True)
    run_training(
        config,
        data,
        args.out,
        device=pick_device(args.device),
        backend=args.backend,
        resume=args.resume,
        progress=progress,
        logs=Logs(args.tensorboard, args.wandb_project if args.wandb else None),
    )
    if is_writer():
        print(f"checkpoint: {args.out / 'checkpoint.safetensors'}")
    return 0


def _open(args: argparse.Namespace, device: torch.device | None = None) -> Opened:
    """The --model and its --data, as the model flags say (on `device`, else --device's)."""
    config = config_from_args(args, ModelConfig)
    device = pick_device(args.device) if device is None else device
    data = DataConfig(args.class_names, args.resize, args.interpolation)
    return open_model(config, args.data, device, args.progress and is_writer(), data)


def _layers(args: argparse.Namespace, opened: Opened) -> list[str]:
    """--layer checked, or the default: DEFAULT_LAYERS for a camlens model, else the last
    layer before the global pooling; each printed with its output (tokens: how they map)."""
    model, size = opened.model, opened.data.image_size
    if args.layers is None and opened.meta:
        return list(DEFAULT_LAYERS)
    layers = list(choose_layers(model, args.layers, size))
    described = {c.name: c.describe() for c in candidate_layers(model, size, args.layout)}
    how = "" if args.layers else " (the last before the global pooling; --layer to choose)"
    for layer in layers:
        print(f"layer {described.get(layer, layer)}{how}")
    return layers


def cmd_evaluate(args: argparse.Namespace) -> int:
    # under torchrun the ranks share the predictions, then rank 0 alone writes
    with process_group(pick_device(args.device), args.backend) as device:
        opened = _open(args, device)
        data = opened.data
        ev = evaluate(opened.model, data.test, batch_size=args.eval_batch_size, tta=args.tta)
    if not is_writer():
        return 0
    info = {"model": str(args.model), "data": data.source, "tta": args.tta}
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
    if args.over_epochs is not None:
        return _explain_over_epochs(args)
    if args.model is None:
        raise DataError("explain needs --model SPEC (or --checkpoint CKPT, or --over-epochs RUN)")
    # under torchrun the ranks share the predictions and the maps, then rank 0 alone draws
    with process_group(pick_device(args.device), args.backend) as device:
        opened = _open(args, device)
        model, data = opened.model, opened.data
        layers = _layers(args, opened)
        mistakes = None
        if args.misclassified is not None:
            mistakes = read_mistakes(args.misclassified, data.test)
        plan = plan_from_args(args, layers=layers, progress=args.progress and is_writer())
        galleries = write_galleries(model, data, args.out, plan, mistakes=mistakes)
    if not is_writer():
        return 0
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


def _explain_over_epochs(args: argparse.Namespace) -> int:
    if args.model is not None:
        raise DataError("--over-epochs RUN names the model (RUN's checkpoint): drop --checkpoint")
    strips, files = explain_over_epochs(
        args.over_epochs,
        args.data,  # opened with the run's checkpoint, checked against its classes
        args.out,
        plan_from_args(args, limit=None),
        device=pick_device(args.device),
        strips=args.strips,
    )
    print(
        f"{len(strips.indices)} mistakes of the final model at epochs "
        f"{', '.join(map(str, strips.epochs))}: {files['over-epochs.png']}"
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    opened = _open(args)
    plan = plan_from_args(args, layers=_layers(args, opened))
    outcome = explain_model(
        opened.model,
        opened.data,
        args.out,
        plan,
        run_info=report_facts(opened),
        history=opened.meta.get("history"),
    )
    _print_report(outcome, args)
    return 0


def _print_report(outcome: Outcome, args: argparse.Namespace) -> None:
    """What `run` and `report` print: accuracy, mistakes, and where everything went."""
    ev, shown = outcome.evaluation, len(outcome.galleries.mistakes)
    note = "" if shown == len(ev.mistakes) else f" ({shown} shown)"
    print(
        f"test accuracy {ev.accuracy:.2%} on {ev.logits.shape[0]} images; "
        f"{len(ev.mistakes)} misclassified{note}; done in {outcome.seconds:.0f}s"
    )
    print(f"evaluation: {args.out / 'eval'}")
    if args.compare_limit is not None:
        print(f"compare: {args.out / 'compare.csv'}, compare.png, sanity.png")
        _print_verdicts(summary_of(args.out))
    _print_outcome(outcome)


def _print_outcome(outcome: Outcome) -> None:
    for folder in outcome.galleries.folders.values():
        print(f"gallery: {folder}")
    print(f"report: {outcome.report}")


def cmd_demo(args: argparse.Namespace) -> int:
    plan = plan_from_args(args)
    outcome = demo(args.out, plan, device=pick_device(args.device))
    ev = outcome.evaluation
    print(
        f"shipped ResNet18 on the bundled sample: {ev.accuracy:.2%} accuracy, "
        f"{len(ev.mistakes)} misclassified, explained in {outcome.seconds:.0f}s"
    )
    _print_outcome(outcome)
    if args.compare_norms:
        diffed = dataclasses.replace(plan, methods=("gradcam",), progress=False)
        files = diff_checkpoints(
            "shipped",
            "shipped-layer",
            "sample",
            args.out / "diff",
            diffed,
            device=pick_device(args.device),
        )
        print(f"batch norm vs layer norm: {files['diff.html']}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    config = config_from_args(args, TrainConfig)
    plan = plan_from_args(args)  # --precision: the training; --cam-precision: the maps
    data = load_dataset(args.data, image_size=args.image_size, progress=args.progress, train=True)
    # under torchrun all ranks train; rank 0 alone then evaluates, explains and reports
    outcome = run(
        config,
        data,
        args.out,
        plan,
        device=pick_device(args.device),
        backend=args.backend,
        tensorboard=args.tensorboard,
        wandb_project=args.wandb_project if args.wandb else None,
    )
    if outcome is not None:
        _print_report(outcome, args)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    model, meta, _ = build_classifier(ModelConfig(str(args.checkpoint)), None)
    path = save_checkpoint(
        model, args.out, {**meta, "weights_dtype": args.dtype}, DTYPES[args.dtype]
    )
    print(f"wrote {path} and {path.with_suffix('.json')}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    if args.model is None:
        model, size = ResNet18(args.classes or 10, args.norm), args.image_size or 32
        print(summary(model, size))
        return 0
    config = config_from_args(args, ModelConfig)
    model, meta, _ = build_classifier(config, args.classes, describe_only=True)
    size = args.image_size or stated_size(config) or 32
    print(summary(model, size))
    candidates = candidate_layers(model, size)
    print(f"\nlayers a map can be read from, at {size} px (output without the batch):")
    for c in candidates:
        unused = not c.reaches_logits and c.misfit is None
        print(f"  {c.describe()}{'  (the logits do not use it)' if unused else ''}")
    try:
        print(f"default --layer: {pick_layer(model, size).name}")
    except ValueError as e:  # tokens that do not fit --prefix-tokens / --tokens-grid
        print(f"default --layer: none ({e})")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise ExplainError(f"--limit must be >= 1, got {args.limit}: the images scored per subset")
    # under torchrun each rank scores its share of the (method, layer) sets; rank 0 writes
    with process_group(pick_device(args.device), args.backend) as device:
        opened = _open(args, device)
        plan = plan_from_args(
            args,
            layers=_layers(args, opened),
            limit=None,  # --limit here is the compare's
            compare_limit=args.limit,
            progress=args.progress and is_writer(),
        )
        if args.top_k is not None:  # 0: every channel
            plan = with_top_k(plan, args.top_k or None)
        grid = None
        if args.grid:
            names = [f.name for f in dataclasses.fields(GridConfig)]
            grid = GridConfig(**{n: getattr(args, "grid_" + n) for n in names})
        result = compare(opened.model, opened.data, args.out, plan, CompareConfig(grid=grid))
    if not is_writer():
        return 0
    # first: which method and layer finds the class (the summary's first line, not repeated)
    summary = result.summary
    if result.grid:
        print(result.grid["line"])
        summary = summary[1:]
    for (method, layer), why in result.skipped.items():
        print(f"left out {method} at {layer}: {why}")
    print(f"scored {len(result.rows)} (method, layer, subset, metric) cells")
    _print_verdicts(summary)
    print("wrote " + ", ".join(str(p) for p in result.files.values()))
    return 0


def _print_verdicts(summary: list[str]) -> None:
    """Each method's sanity state, then the paired headline (what compare.json "summary" says)."""
    print("sanity and paired verdicts:")
    for line in summary:
        print(f"  {line}")


def cmd_diff(args: argparse.Namespace) -> int:
    if len(args.checkpoint) != 2:
        raise DataError(
            f"diff compares two models: give --checkpoint twice, got {len(args.checkpoint)}"
        )
    if args.names is not None and len(args.names) != 2:
        raise DataError(f"--names takes two names, A,B; got {','.join(args.names)}")
    files = diff_checkpoints(
        args.checkpoint[0],
        args.checkpoint[1],
        args.data,
        args.out,
        plan_from_args(args),
        names=tuple(args.names) if args.names else None,
        device=pick_device(args.device),
        cards=args.cards,
    )
    print("wrote " + ", ".join(str(p) for p in files.values()))
    return 0
