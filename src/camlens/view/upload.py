"""An uploaded photo -> the uint8 pixels the model sees, or a one-line `UploadError`.

Limits: `MAX_BYTES` of encoded data (the server stops reading past it) and `MAX_PIXELS`
decoded pixels, checked on the header before anything is decoded; PIL's own
decompression-bomb guard (`Image.MAX_IMAGE_PIXELS`) is turned from a warning into an error
for the decode. The pixels are decoded exactly as an image folder's
(`camlens.data.decode.decode_image`: RGB, upright, resized and centre-cropped).
"""

from __future__ import annotations

import io
import warnings

import torch
from PIL import Image
from torch import Tensor

from camlens.data import DataError, Preprocess
from camlens.data.decode import decode_image

__all__ = ["MAX_BYTES", "MAX_PIXELS", "UploadError", "read_upload"]

MAX_BYTES = 10 * 1024 * 1024  # 10 MB: any photo a phone takes
MAX_PIXELS = 40_000_000  # 40 megapixels: a 16-bit PNG of this size decodes to ~240 MB


class UploadError(ValueError):
    """An upload the viewer refuses: one line for the page."""


def read_upload(data: bytes, name: str, prep: Preprocess) -> Tensor:
    """(3, S, S) uint8 of the encoded image `data`, preprocessed as `prep` says."""
    if len(data) > MAX_BYTES:
        raise UploadError(f"{name} is {len(data) / 1e6:.1f} MB: uploads are limited to 10 MB")
    if not data:
        raise UploadError(f"{name} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # sized just below
            with Image.open(io.BytesIO(data)) as img:  # the header only: nothing decoded yet
                w, h = img.size
    except Image.DecompressionBombError:  # PIL's own guard, at twice MAX_IMAGE_PIXELS
        raise UploadError(
            f"{name} claims too many pixels: images over {MAX_PIXELS // 1_000_000} megapixels "
            "are refused (a decompression bomb guard)"
        ) from None
    except Exception:
        raise UploadError(f"cannot read {name}: not an image format PIL reads") from None
    if w * h > MAX_PIXELS:
        raise UploadError(
            f"{name} is {w}x{h} pixels: images over {MAX_PIXELS // 1_000_000} megapixels "
            "are refused (a decompression bomb guard)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            pixels = decode_image(data, name, prep)  # (S, S, 3) uint8
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise UploadError(f"{name} decodes to too many pixels (a decompression bomb)") from None
    except DataError as e:
        raise UploadError(str(e).split("; delete")[0]) from None
    return torch.tensor(pixels).permute(2, 0, 1).contiguous()  # (S, S, 3) -> (3, S, S)
