"""The version, in one place: pyproject.toml reads it, and modules below the package root import
it from here rather than from `camlens` (which would run the root's imports of every module)."""

__version__ = "0.1.0"
