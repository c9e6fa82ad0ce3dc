"""Data flows one way: each module imports only camlens modules above it in the pipeline."""

import ast
from pathlib import Path

import camlens

ORDER = [
    "atomic",
    "download",
    "data",
    "model",
    "plots",
    "evaluate",
    "train",
    "cam",
    "metrics",
    "overlay",
    "gallery",
    "report",
    "cli",
    "__main__",
]
PACKAGE = Path(camlens.__file__).parent


def top_module(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    return rel.parts[0]


def camlens_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "camlens" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_every_module_has_a_place_in_the_pipeline():
    for path in PACKAGE.rglob("*.py"):
        if path.name != "__init__.py" or path.parent != PACKAGE:
            assert top_module(path) in ORDER, path


def test_imports_only_flow_downstream():
    for path in PACKAGE.rglob("*.py"):
        if path.parent == PACKAGE and path.name == "__init__.py":
            continue  # the public surface re-exports everything
        me = ORDER.index(top_module(path))
        for other in camlens_imports(path) - {top_module(path)}:
            assert ORDER.index(other) < me, f"{path.relative_to(PACKAGE)} imports camlens.{other}"


def test_cam_works_on_any_module_without_the_model():
    for path in (PACKAGE / "cam").rglob("*.py"):
        assert "model" not in camlens_imports(path), path
