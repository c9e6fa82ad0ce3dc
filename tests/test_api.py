"""The public surface is `camlens.__all__`: every name in it exists, none is missed."""

import inspect
import subprocess
import sys

import camlens


def test_all_names_exist_and_are_unique():
    assert len(camlens.__all__) == len(set(camlens.__all__))
    for name in camlens.__all__:
        assert hasattr(camlens, name), name


def test_every_public_class_and_function_is_exported():
    # the root is lazy: each name in __all__ resolves on first use, so resolve them all first
    for name in camlens.__all__:
        getattr(camlens, name)
    public = {
        name
        for name, value in vars(camlens).items()
        if not name.startswith("_") and (inspect.isclass(value) or inspect.isfunction(value))
    }
    assert set(dir(camlens)) >= set(camlens.__all__)
    assert public <= set(camlens.__all__), public - set(camlens.__all__)


def test_public_functions_have_docstrings_or_are_classes_with_them():
    for name in camlens.__all__:
        value = getattr(camlens, name)
        if callable(value):
            assert inspect.getdoc(value), name


def test_every_lazy_name_is_in_all_and_back():
    """A name the root resolves lazily but leaves out of `__all__` (or the reverse) is a public
    name the surface does not say; WatchCallback stays out: it would import Lightning."""
    assert set(camlens._MODULE_OF) == set(camlens.__all__) - {"__version__"}
    assert "WatchCallback" not in camlens.__all__


def test_a_subpackage_is_reached_from_a_bare_import():
    """The lazy root still reaches its subpackages as attributes (the report of any model is
    `camlens.pipeline.report`); an unknown name is an AttributeError, not an import."""
    code = (
        "import camlens, sys\n"
        "assert callable(camlens.pipeline.report) and camlens.watch.Watch is camlens.Watch\n"
        "assert not hasattr(camlens, 'nope') and not hasattr(camlens, '_nope')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


OLD_NAMES = [  # (where, camlens 0.1's name): each still answers, warns, and gives the new one
    ("camlens", "compute_cams"),
    ("camlens.explain", "compute_cams"),
    ("camlens.explain", "explain_counterfactual"),
    ("camlens.cam", "normalize_cams"),
]


def test_a_map_is_called_a_map_and_the_old_names_still_answer():
    import dataclasses
    import importlib

    import pytest

    from camlens.cam.renamed import RENAMED

    for module in {m for m in camlens._MODULE_OF.values()} | {"camlens.cam"}:
        public = importlib.import_module(module).__all__
        assert not [n for n in public if "cams" in n], module
    for where, old in OLD_NAMES:
        module = importlib.import_module(where)
        with pytest.warns(DeprecationWarning, match=f"{old} is now .*{RENAMED[old]}"):
            assert getattr(module, old) is getattr(module, RENAMED[old])
    for cls in (camlens.CamResult, camlens.Explanations, camlens.EpochStrips, camlens.ModelDiff):
        fields = {f.name for f in dataclasses.fields(cls)}
        assert not [n for n in fields if "cams" in n], cls
        old_names = [n for n in vars(cls) if "cams" in n]
        assert old_names, cls
        for old in old_names:
            # an instance of a same-named subclass whose new name (a field or property) is known
            row = object.__new__(type(cls.__name__, (cls,), {RENAMED[old]: (sentinel := object())}))
            with pytest.warns(DeprecationWarning, match=f"{cls.__name__}.{old} is now"):
                assert getattr(row, old) is sentinel
