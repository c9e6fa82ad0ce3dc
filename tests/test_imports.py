"""Data flows one way: each module imports only camlens modules above it in the pipeline."""

import ast
import subprocess
import sys
from pathlib import Path

import camlens

ORDER = [
    "version",
    "choices",
    "atomic",
    "distributed",
    "download",
    "data",
    "model",
    "classifier",
    "plots",
    "evaluate",
    "train",
    "cam",
    "plan",  # torch-free, needing only cam (lazily): metrics reads GridConfig from it
    "metrics",
    "explain",
    "outputs",
    "mapfile",
    "overlay",
    "gallery",
    "epochs",
    "watch",
    "report",
    "compare",
    "diff",
    "view",  # a consumer, like report: the live viewer (its web libraries: camlens[view])
    "pipeline",
    "cli",
    "__main__",
]
PACKAGE = Path(camlens.__file__).parent
ROOT = "camlens"  # what `import camlens` and `from camlens import X` reach: the root __init__


def top_module(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    return rel.parts[0]


def camlens_imports(path: Path, source: str | None = None) -> set[str]:
    """The top modules `path` (or `source` as if at `path`) imports; ROOT for the package root."""
    package = [ROOT, *path.relative_to(PACKAGE).parent.parts]
    found = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            names = [".".join([*base, *([node.module] if node.module else [])])]
        for name in names:
            parts = name.split(".")
            if parts[0] == ROOT:
                found.add(parts[1] if len(parts) > 1 else ROOT)
    return found


def test_every_module_has_a_place_in_the_pipeline():
    for path in PACKAGE.rglob("*.py"):
        if path.name != "__init__.py" or path.parent != PACKAGE:
            assert top_module(path) in ORDER, path


def test_imports_only_flow_downstream():
    for path in PACKAGE.rglob("*.py"):
        if path.parent == PACKAGE and path.name == "__init__.py":
            continue  # the public surface re-exports everything
        rel, me = path.relative_to(PACKAGE), ORDER.index(top_module(path))
        for other in camlens_imports(path) - {top_module(path)}:
            assert other != ROOT, f"{rel} imports the package root: import from the defining module"
            assert ORDER.index(other) < me, f"{rel} imports camlens.{other}"


def _documented_order(text: str) -> list[str]:
    """The arrow chain of a layout block: `src/camlens/  version -> choices -> ...`."""
    start = text.index("src/camlens/  ")
    chain = text[start + len("src/camlens/") : text.index("(each imports", start)]
    return [name.strip() for name in chain.replace("\n", " ").split("->")]


def test_the_documented_order_is_the_checked_one():
    """README.md and docs/layout.md list the packages in the order this file enforces."""
    root = PACKAGE.parents[1]
    for doc in ("README.md", "docs/layout.md"):
        assert _documented_order((root / doc).read_text()) == ORDER[:-1], doc


def test_no_package_imports_itself_at_call_time():
    """A module inside a subpackage never imports that subpackage's `__init__` in a function
    (a sign of a cycle worked around, e.g. cam/config.py reaching for cam.METHODS)."""
    for path in PACKAGE.rglob("*.py"):
        if path.parent == PACKAGE or path.name == "__init__.py":
            continue
        own = f"{ROOT}.{top_module(path)}"
        for func in ast.walk(ast.parse(path.read_text())):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.ImportFrom) and node.module == own:
                    raise AssertionError(
                        f"{path.relative_to(PACKAGE)} imports {own} in {func.name}"
                    )


def test_the_root_import_is_seen_in_every_spelling():
    for line in ("import camlens", "from camlens import train", "from .. import train"):
        assert camlens_imports(PACKAGE / "data" / "m.py", line) == {ROOT}, line
    assert camlens_imports(PACKAGE / "data" / "m.py", "from . import cache") == {"data"}


def test_cam_works_on_any_module_without_the_model():
    for path in (PACKAGE / "cam").rglob("*.py"):
        assert "model" not in camlens_imports(path), path


# the CLI's --version and every --help, then which heavy modules the process imported
QUICK_CLI = """
import contextlib, io, sys
from camlens.cli import build_parser, main
commands = build_parser()._subparsers._group_actions[0].choices
for argv in [["--version"], ["--help"]] + [[c, "--help"] for c in commands]:
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit as e:
            assert e.code == 0, (argv, e.code)
print(len(commands), sorted(m for m in ("torch", "matplotlib") if m in sys.modules))
"""


def test_version_and_every_help_import_neither_torch_nor_matplotlib():
    done = subprocess.run([sys.executable, "-c", QUICK_CLI], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    count, heavy = done.stdout.split(" ", 1)
    assert int(count) >= 10  # demo, run, train, evaluate, explain, compare, diff, report, ...
    assert heavy.strip() == "[]", f"imported {heavy.strip()}: import them in the command"


def test_import_camlens_is_lazy_and_every_public_name_resolves():
    # compare, evaluate, overlay, train: functions named like the packages that define them
    code = (
        "import sys, camlens; lazy = 'torch' not in sys.modules; "
        "import camlens.compare, camlens.evaluate, camlens.overlay, camlens.train; "
        "print(lazy, all(callable(camlens.__dict__.get(n, getattr(camlens, n))) and not "
        "isinstance(getattr(camlens, n), type(sys)) for n in "
        "('compare', 'evaluate', 'overlay', 'train')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lazy, functions = done.stdout.split()
    assert lazy == "True", "import camlens imports torch"
    assert functions == "True", "importing a package bound it over the function of its name"
    for name in camlens.__all__:
        assert getattr(camlens, name) is not None, name


def test_flag_words_are_in_step_with_the_modules_that_use_them():
    from camlens import choices
    from camlens.cam import LAYOUTS, METHODS, PRECISIONS

    assert tuple(METHODS) == choices.METHOD_NAMES
    assert tuple(PRECISIONS) == choices.PRECISION_NAMES
    assert LAYOUTS == choices.LAYOUTS
