"""The one place camlens pages escape text and encode pictures: the report, diff.html.

esc(value)                       text for HTML, quotes included
b64(data)                        bytes -> base64 text
data_uri(data, fmt)              bytes -> "data:image/<fmt>;base64,..."
encode_image(pixels, fmt, ...)   (H, W, 3) uint8 -> base64 PNG / JPEG / WebP, optionally
                                 shrunk to a thumbnail first
encode_all(batches, ...)         many (N, H, W, 3) batches -> base64 strings, in a thread pool
kv_table(rows)                   a two-column table of facts
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

__all__ = [
    "MIME",
    "b64",
    "data_uri",
    "encode_all",
    "encode_image",
    "esc",
    "fmt_value",
    "kv_table",
    "seconds_text",
]

MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def esc(value: object) -> str:
    """`value` as text that is safe in HTML content and in quoted attributes."""
    return html.escape(str(value), quote=True)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def data_uri(data: bytes, fmt: str = "png") -> str:
    return f"data:{MIME[fmt]};base64,{b64(data)}"


def encode_image(
    pixels: np.ndarray, fmt: str = "png", quality: int = 85, thumbnail: int | None = None
) -> str:
    """(H, W, 3) uint8 -> base64 of its PNG, JPEG or WebP. `thumbnail`: first shrink it so that
    its longer side is at most that many pixels (aspect kept; smaller pictures stay as they are)."""
    img = Image.fromarray(pixels)
    if thumbnail is not None and max(img.size) > thumbnail:
        img.thumbnail((thumbnail, thumbnail), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG", compress_level=6)
    elif fmt == "jpeg":
        img.save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format="WEBP", quality=quality, method=4)
    return b64(buf.getvalue())


def _encode_job(job: tuple[np.ndarray, str, int, int | None]) -> str:
    return encode_image(*job)


def encode_all(
    batches: list[tuple[torch.Tensor, str]],
    quality: int,
    workers: int | None,
    thumbnails: list[int | None] | None = None,
) -> list[list[str]]:
    """Each (N, S, S, 3) uint8 batch in its format -> N base64 strings, all batches in one thread
    pool (PIL releases the GIL while encoding). `thumbnails`: per batch, see `encode_image`."""
    sizes = thumbnails or [None] * len(batches)
    jobs = [
        (a, fmt, quality, size)
        for (t, fmt), size in zip(batches, sizes, strict=True)
        for a in t.cpu().contiguous().numpy()
    ]
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        flat = list(pool.map(_encode_job, jobs))
    out, start = [], 0
    for t, _ in batches:
        out.append(flat[start : start + t.shape[0]])
        start += t.shape[0]
    return out


def fmt_value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, separators=(", ", ": "), default=str)
    return str(value)


def seconds_text(value: object) -> str:
    if not isinstance(value, (int, float)):
        return "—"
    if value >= 60:
        return f"{value:.0f} s ({value / 60:.1f} min)"
    return f"{value:.1f} s" if value >= 10 else f"{value:.2f} s"


def kv_table(rows: list[tuple[str, object]], cls: str = "kv") -> str:
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(fmt_value(v))}</td></tr>" for k, v in rows)
    return f'<table class="{cls}">{body}</table>'
