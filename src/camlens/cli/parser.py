"""The argparse side of the `camlens` command: the parser, one function per subcommand.

`build_parser()` wires each subcommand to its `cmd_*` in `commands.py`, imported only when the
command runs (it imports torch; --help does not). The shared flags are in `flags.py`, the
examples that end each --help in `examples.py`.
"""

from __future__ import annotations

import argparse
import importlib
import typing
from pathlib import Path

from camlens.choices import COMPARE_LIMIT, COMPARE_METHODS, DEFAULT_LAYERS, PRECISION_NAMES
from camlens.cli.examples import (
    COMPARE_EXAMPLE,
    DEMO_EXAMPLE,
    DIFF_EXAMPLE,
    EVALUATE_EXAMPLE,
    EXPLAIN_EXAMPLE,
    EXPORT_EXAMPLE,
    REPORT_EXAMPLE,
    RUN_EXAMPLE,
    SUMMARY_EXAMPLE,
    TRAIN_EXAMPLE,
    VIEW_EXAMPLE,
)
from camlens.cli.flags import (
    OneLineParser,
    add_checkpoint_flags,
    add_config_flags,
    add_data_flags,
    add_device_flags,
    add_explain_flags,
    add_limit_flags,
    add_plan_flags,
    add_wandb_flags,
    name_list,
)
from camlens.plan import GridConfig
from camlens.train.config import TrainConfig
from camlens.version import __version__

__all__ = ["OneLineParser", "add_config_flags", "build_parser"]

FORMAT = argparse.RawDescriptionHelpFormatter  # the examples keep their lines


def _command(
    name: str, module: str = "camlens.cli.commands"
) -> typing.Callable[[argparse.Namespace], int]:
    """`<module>.<name>`, imported when the command runs: it imports torch, --help does not."""

    def run(args: argparse.Namespace) -> int:
        commands = importlib.import_module(module)

        return getattr(commands, name)(args)

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="camlens", description="Where a CNN looks when it gets an image wrong."
    )
    parser.add_argument("--version", action="version", version=f"camlens {__version__}")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser
    )
    _add_demo(sub)
    _add_run(sub)
    _add_train(sub)
    _add_evaluate(sub)
    _add_explain(sub)
    _add_compare(sub)
    _add_diff(sub)
    _add_report(sub)
    _add_export(sub)
    _add_summary(sub)
    _add_view(sub)
    return parser


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="offline: explain the shipped model's mistakes on the bundled sample",
        epilog=DEMO_EXAMPLE,
        formatter_class=FORMAT,
    )
    p.add_argument("--out", type=Path, default=Path("camlens-demo"), help="default: camlens-demo")
    add_explain_flags(p, layers=DEFAULT_LAYERS)
    p.add_argument(
        "--compare-norms",
        action="store_true",
        help="also put the two shipped models (batch norm, layer norm) side by side, as "
        "`camlens diff` does, into OUT/diff/diff.html",
    )
    add_device_flags(p)
    p.set_defaults(run=_command("cmd_demo"), progress=True)


def _add_run(sub) -> None:
    p = sub.add_parser(
        "run",
        help="train, evaluate, explain the mistakes and write the report, in one go",
        epilog=RUN_EXAMPLE,
        formatter_class=FORMAT,
    )
    add_data_flags(p)
    p.add_argument("--out", required=True, type=Path, help="run folder; resumed when it exists")
    p.add_argument("--tensorboard", action="store_true", help="also log to OUT/tensorboard")
    add_wandb_flags(p)
    add_plan_flags(p, ["compare_limit"])
    add_limit_flags(p)
    # --precision is the training's here (TrainConfig); the maps' is --cam-precision
    add_explain_flags(p, layers=DEFAULT_LAYERS, precision="cam")
    add_device_flags(p, backend=True)
    add_config_flags(p, TrainConfig)
    p.set_defaults(run=_command("cmd_run"))


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a ResNet18, checkpoint every epoch",
        epilog=TRAIN_EXAMPLE,
        formatter_class=FORMAT,
    )
    add_data_flags(p)
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        help="run folder (checkpoints, metrics.jsonl, curves.png)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--tensorboard", action="store_true", help="also log to OUT/tensorboard")
    add_wandb_flags(p)
    add_device_flags(p, backend=True)
    add_config_flags(p, TrainConfig)
    p.set_defaults(run=_command("cmd_train"))


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="test accuracy, confusion matrix, misclassified.csv",
        epilog=EVALUATE_EXAMPLE,
        formatter_class=FORMAT,
    )
    add_checkpoint_flags(p)
    add_data_flags(p, image_size=None)
    p.add_argument("--out", required=True, type=Path, help="folder for the evaluation files")
    p.add_argument("--tta", action="store_true", help="average each image with its mirror image")
    add_plan_flags(p, ["eval_batch_size"])
    add_device_flags(p, backend=True)
    p.set_defaults(run=_command("cmd_evaluate"))


def _add_explain(sub) -> None:
    p = sub.add_parser(
        "explain",
        help="Grad-CAM (and family) gallery of the misclassified test images",
        epilog=EXPLAIN_EXAMPLE,
        formatter_class=FORMAT,
    )
    add_checkpoint_flags(p, required=False)  # or --over-epochs RUN, which names the model
    add_data_flags(p, image_size=None)
    p.add_argument(
        "--out", required=True, type=Path, help="folder; galleries go in OUT/gallery/METHOD"
    )
    p.add_argument(
        "--over-epochs",
        type=Path,
        metavar="RUN",
        help="instead of a gallery: the final model of run folder RUN, its --strips most "
        "confident mistakes explained at every epoch kept by `train --keep-every`, "
        "into OUT/over-epochs.png and .json (first --method and last --layer)",
    )
    p.add_argument(
        "--strips",
        type=int,
        default=16,
        help="with --over-epochs: the mistakes shown, one strip each (default: 16)",
    )
    add_explain_flags(p)
    add_limit_flags(p)
    # --true: the flag's name before one name per concept; kept so that old scripts still run
    add_plan_flags(p, ["sort", "label_name", "pred_name"])
    p.add_argument("--misclassified", type=Path, help="misclassified.csv from camlens evaluate")
    add_device_flags(p, backend=True)
    p.set_defaults(run=_command("cmd_explain"))


def _add_compare(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="can these maps be trusted? faithfulness of each method and layer vs baselines",
        epilog=COMPARE_EXAMPLE,
        formatter_class=FORMAT,
    )
    add_checkpoint_flags(p)
    add_data_flags(p, image_size=None)
    p.add_argument("--out", required=True, type=Path, help="folder for the four files")
    # default layers: layer3,layer4 for a camlens model (cmd_compare), else the picked one
    # default methods: those that fit minutes on 2 CPU cores; the costly ones on request
    add_explain_flags(p, precision=False, methods=COMPARE_METHODS, counterfactual=False)
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
    # --seed: the flag's name before one name per concept (training's is --seed); kept so
    # that old scripts still run
    add_plan_flags(p, ["eval_batch_size", "metric_seed"], {"metric_seed": ("--seed",)})
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
    add_device_flags(p, backend=True)
    p.set_defaults(run=_command("cmd_compare"))


def _add_diff(sub) -> None:
    p = sub.add_parser(
        "diff",
        help="two models side by side: shared and own mistakes, do their maps agree?",
        epilog=DIFF_EXAMPLE,
        formatter_class=FORMAT,
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        action="append",
        type=Path,
        help="give it twice: model A, then model B (a checkpoint or `shipped`, `shipped-layer`)",
    )
    add_data_flags(p, image_size=False)
    p.add_argument("--out", required=True, type=Path, help="folder for diff.html and diff.json")
    p.add_argument(
        "--names",
        type=name_list,
        help="the two models' names on the page, e.g. BN,LN "
        "(default: their norms when they differ, else the checkpoints)",
    )
    add_explain_flags(p, layers=DEFAULT_LAYERS, precision=False, counterfactual=False)
    # --limit: its name before one name per concept (it caps mistakes elsewhere); kept so
    # that old scripts still run
    p.add_argument(
        "--cards",
        "--limit",
        dest="cards",
        type=int,
        default=24,
        help="cards per group on the page (default: 24)",
    )
    add_device_flags(p)
    p.set_defaults(run=_command("cmd_diff"))


def _add_report(sub) -> None:
    p = sub.add_parser(
        "report",
        help="a trained model's report: evaluate, explain the mistakes, gallery + report.html",
        epilog=REPORT_EXAMPLE,
        formatter_class=FORMAT,
    )
    add_checkpoint_flags(p)
    add_data_flags(p, image_size=None)
    p.add_argument("--out", required=True, type=Path, help="folder for eval/, gallery/, report")
    add_explain_flags(p)
    add_limit_flags(p)
    add_plan_flags(p, ["compare_limit", "eval_batch_size"])
    add_device_flags(p)
    p.set_defaults(run=_command("cmd_report"))


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="re-save a checkpoint, e.g. in half precision",
        epilog=EXPORT_EXAMPLE,
        formatter_class=FORMAT,
    )
    p.add_argument("--checkpoint", required=True, type=Path, help="checkpoint.safetensors to read")
    p.add_argument(
        "--out", required=True, type=Path, help="the new .safetensors (its .json beside)"
    )
    # commands.DTYPES's keys: the names of the precisions
    p.add_argument("--dtype", default="fp16", choices=sorted(PRECISION_NAMES), help="default: fp16")
    p.set_defaults(run=_command("cmd_export"))


def _add_summary(sub) -> None:
    p = sub.add_parser(
        "summary",
        help="layer name_list, output shapes and parameters",
        epilog=SUMMARY_EXAMPLE,
        formatter_class=FORMAT,
    )
    add_checkpoint_flags(p, required=False)
    p.add_argument("--norm", default="batch", choices=("batch", "layer", "group"))
    p.add_argument("--classes", type=int, help="default: the --weights' head's count, else 10")
    p.add_argument("--image-size", type=int, help="default: what the model states, else 32")
    p.set_defaults(run=_command("cmd_summary"))


def _add_view(sub) -> None:
    p = sub.add_parser(
        "view",
        help="explore the mistakes live in the browser: any method, layer, class, opacity",
        epilog=VIEW_EXAMPLE,
        formatter_class=FORMAT,
    )
    p.add_argument(
        "folder",  # not `run`: args.run is the command itself
        nargs="?",
        type=Path,
        metavar="RUN",
        help="a folder camlens wrote (demo, run, report, explain, evaluate): its model, data, "
        "mistakes, gallery cards and compare result; or give --model and --data",
    )
    add_checkpoint_flags(p, required=False)
    add_data_flags(p, image_size=None, required=False)
    add_plan_flags(p, ["layers"])  # the layers the page opens on; it offers every other one
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to serve on (default: 127.0.0.1, this machine only; any other prints "
        "a warning: whoever reaches it can see the images and run the model)",
    )
    p.add_argument(
        "--port", type=int, default=8036, help="port to serve on; 0: any free one (default: 8036)"
    )
    add_device_flags(p)
    p.set_defaults(run=_command("cmd_view", "camlens.cli.view"))
