"""One encoded photo -> the uint8 pixels the model sees: any mode to RGB, then the eval transform.

`Preprocess` is torchvision's and timm's evaluation transform: resize the short side, then
centre-crop a square (torchvision `Resize(256)` + `CenterCrop(224)`, timm `crop_pct`), with
the same rounding, so a model's accuracy here is the one it was published with. The stored
uint8 images ARE the cropped pixels: the overlay is drawn on exactly what the model saw.
CIFAR (already at the model's size) passes through untouched.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from camlens.data.sources import DataError

__all__ = ["INTERPOLATIONS", "DataConfig", "Preprocess", "decode_image", "open_rgb"]

INTERPOLATIONS = {
    "bicubic": Image.Resampling.BICUBIC,  # timm's default
    "bilinear": Image.Resampling.BILINEAR,  # torchvision's default
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}

# what PIL raises on a file it cannot read: an unknown format, a truncated or damaged stream
_UNREADABLE = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError)


@dataclass(frozen=True)
class Preprocess:
    """How a photo becomes the model's input: resize the short side, centre-crop a square."""

    crop: int  # the side of the square the model sees: the stored images' side
    resize: int | None = None  # the short side before the crop; None: `crop` (crop_pct 1)
    interpolation: str = "bicubic"  # how the resize samples (INTERPOLATIONS); timm's default

    def __post_init__(self) -> None:
        if self.crop < 8:
            raise DataError(f"image size {self.crop} is too small: use 8 or more (CIFAR is 32)")
        if self.resize is not None and self.resize < self.crop:
            raise DataError(
                f"--resize {self.resize} is smaller than the crop {self.crop}: the short side "
                "must be resized to at least the crop (e.g. --resize 256 --crop 224)"
            )
        if self.interpolation not in INTERPOLATIONS:
            raise DataError(
                f"unknown --interpolation {self.interpolation!r}: use one of "
                f"{', '.join(INTERPOLATIONS)}"
            )

    @classmethod
    def from_crop_pct(cls, crop: int, crop_pct: float, interpolation: str) -> Preprocess:
        """timm's `crop_pct`: the short side is resized to floor(crop / crop_pct) first."""
        return cls(crop, math.floor(crop / crop_pct), interpolation)

    @property
    def short_side(self) -> int:
        return self.crop if self.resize is None else self.resize

    def key(self) -> str:
        """A file-name-safe key of these settings: "224c-256r-bilinear"."""
        return f"{self.crop}c-{self.short_side}r-{self.interpolation}"

    def describe(self) -> str:
        """One phrase for the report: "resize 256 bilinear, centre crop 224"."""
        return f"resize {self.short_side} {self.interpolation}, centre crop {self.crop}"

    def apply(self, img: Image.Image) -> Image.Image:
        """RGB photo of any shape -> (crop, crop), as torchvision's Resize + CenterCrop round."""
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        if short != self.short_side:
            new_long = int(self.short_side * long / short)  # torchvision truncates, as here
            size = (self.short_side, new_long) if w <= h else (new_long, self.short_side)
            img = img.resize(size, INTERPOLATIONS[self.interpolation])
            w, h = img.size
        if (w, h) != (self.crop, self.crop):
            top = int(round((h - self.crop) / 2.0))  # torchvision CenterCrop's offsets
            left = int(round((w - self.crop) / 2.0))
            img = img.crop((left, top, left + self.crop, top + self.crop))
        return img


@dataclass(frozen=True)
class DataConfig:
    """How `--data` is read for a model, beyond its size: the names and the eval transform."""

    classes: str | None = None  # a .txt/.json of class names (names.py); None: the folders'
    resize: int | None = None  # the short side before the crop; None: the model's, else the crop
    interpolation: str | None = None  # the resize's; None: the model's (timm), else bicubic

    def preprocess(self, crop: int, stated: dict | None = None) -> Preprocess:
        """The transform at `crop` px: these settings, else what the model `stated` (timm's
        pretrained_cfg as {"crop_pct": 0.875, "interpolation": "bicubic"}), else crop_pct 1."""
        stated = stated or {}
        interpolation = self.interpolation or stated.get("interpolation") or "bicubic"
        if self.resize is None and stated.get("crop_pct"):
            return Preprocess.from_crop_pct(crop, float(stated["crop_pct"]), interpolation)
        return Preprocess(crop, self.resize, interpolation)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: 16-bit and float greys scaled, CMYK and palettes converted."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit PNGs: PIL's convert("RGB") would clip at 255 and turn most pixels white
        grey = np.asarray(img, dtype=np.float64)
        top = 65535.0 if grey.max(initial=0) > 255 or img.mode.startswith("I;16") else 255.0
        grey = np.clip(np.rint(grey * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if img.mode == "F":
        grey = np.asarray(img, dtype=np.float64)
        scale = 255.0 if grey.max(initial=0) <= 1.0 else 1.0
        return Image.fromarray(np.clip(np.rint(grey * scale), 0, 255).astype(np.uint8)).convert(
            "RGB"
        )
    if img.mode in ("P", "PA") and "transparency" in img.info:
        img = img.convert("RGBA")  # palette transparency only survives via RGBA
    return img if img.mode == "RGB" else img.convert("RGB")  # no copy of a plain RGB photo


def _why(e: Exception) -> str:
    if isinstance(e, UnidentifiedImageError):  # its text names a BytesIO, not the file
        return "not an image format PIL reads"
    return str(e) or type(e).__name__


def open_rgb(data: bytes, name: str) -> Image.Image:
    """Encoded bytes -> an upright RGB image (EXIF orientation applied), or a one-line DataError."""
    try:
        img = Image.open(io.BytesIO(data))  # in memory: no file to close
        img.load()
        ImageOps.exif_transpose(img, in_place=True)  # a phone photo stored sideways
        return _to_rgb(img)
    except _UNREADABLE as e:
        raise DataError(f"cannot read image {name}: {_why(e)}; delete or replace it") from None


def check_header(data: bytes, name: str) -> str | None:
    """Why `data` is not an image PIL can open (header only, nothing decoded), else None."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            _ = img.size  # the header is parsed on open
    except _UNREADABLE as e:
        return f"cannot read image {name}: {_why(e)}"
    return None


def decode_image(data: bytes, name: str, prep: Preprocess | int) -> np.ndarray:
    """One encoded image -> (crop, crop, 3) uint8: RGB, upright, resized and centre-cropped."""
    if isinstance(prep, int):
        prep = Preprocess(prep)
    return np.asarray(prep.apply(open_rgb(data, name)), dtype=np.uint8)
