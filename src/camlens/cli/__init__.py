"""The `camlens` command: argparse wiring only. Parse, call the public API, print, exit code.

The work itself is `camlens.pipeline` (run, demo, report, explain_model, write_galleries) and
`camlens.compare`, which the
notebook calls too; a subcommand here is a few calls to it and a line or two printed.

User errors (a missing file, a bad flag value, a checkpoint for another model) end as one line
on stderr and exit code 2; anything else is a bug and keeps its traceback.

`camlens --version` and every `--help` answer without importing torch or matplotlib: the parser
reads only torch-free modules (camlens.choices, camlens.train.config), a command's module is
imported when it runs, and the error classes when an error is caught.

    parser.py    build_parser(): subcommands, flags, examples; OneLineParser; add_config_flags
    commands.py  cmd_compare, cmd_demo, cmd_run, cmd_train, cmd_evaluate, cmd_explain,
                 cmd_report, cmd_export, cmd_summary; the commands after training open any
                 classifier with --model (camlens.classifier.open_model)
    view.py      cmd_view: `camlens view`, whose web libraries are the extra camlens[view]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from camlens.cli.parser import build_parser

__all__ = ["USER_ERRORS", "build_parser", "main"]


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that are the user's mistake: one line on stderr, exit code 2. Imported
    here, when an error is caught, as their modules import torch."""
    from camlens.atomic import WriteError
    from camlens.cam import LayoutError
    from camlens.data import DataError
    from camlens.distributed import DistributedError
    from camlens.download import DownloadError
    from camlens.explain import ExplainError
    from camlens.model import CheckpointError
    from camlens.train import RunError

    return (
        DataError,
        DistributedError,
        DownloadError,
        ExplainError,
        CheckpointError,
        RunError,
        WriteError,
        FileNotFoundError,
        LayoutError,  # a layer's output that --layout cannot read
    )


def __getattr__(name: str) -> Any:
    if name == "USER_ERRORS":  # the tuple, built on first use
        return user_errors()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except user_errors() as e:  # evaluated only once an exception is raised
        print(f"camlens: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("camlens: interrupted (a training run continues with --resume)", file=sys.stderr)
        return 130
