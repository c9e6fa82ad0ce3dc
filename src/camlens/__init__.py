"""camlens: where a CNN looks when it gets an image wrong."""
__version__ = "0.1.0"
