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
