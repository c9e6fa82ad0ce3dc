"""PNG encoding in which a page costs no more than its cards: rows deflated once, joined.

A PNG's pixels are one zlib stream of filtered rows. Each card's rows are filtered (the first
row "Sub", the others "Up", so that no row looks above the card) and deflated on their own,
ending on a byte boundary (a sync flush); a card's PNG and a page's PNG are then both the
same deflated pieces joined, with the zlib checksum combined arithmetically rather than
recomputed. So a page of ten cards is ten joins, not a second encoding of their pixels. With
"Up" at zlib level 1 a card encodes ~2.5x faster than PIL's level 1, at the same size (both
measured by `benchmarks/explain_speed.py --png`); zlib releases the GIL, so threads scale.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Deflated", "adler32_combine", "deflate_rows", "png_of"]

SIGNATURE = b"\x89PNG\r\n\x1a\n"
MOD = 65521  # adler-32's modulus
SUB, UP = 1, 2  # PNG row filter types


@dataclass(frozen=True)
class Deflated:
    """Rows of an RGB picture, PNG-filtered and deflated on their own."""

    width: int
    height: int
    data: bytes  # raw deflate, ending on a byte boundary, no final block
    adler: int  # adler-32 of the filtered rows
    length: int  # bytes of the filtered rows


def deflate_rows(pixels: np.ndarray, level: int = 1) -> Deflated:
    """(H, W, 3) uint8 -> its rows, filtered and deflated, ready to join with others."""
    h, w, _ = pixels.shape
    rows = np.ascontiguousarray(pixels).reshape(h, w * 3)
    filtered = np.empty((h, w * 3 + 1), np.uint8)
    filtered[:, 0] = UP
    filtered[0, 0] = SUB
    filtered[0, 1:4] = rows[0, :3]
    np.subtract(rows[0, 3:], rows[0, :-3], out=filtered[0, 4:])  # uint8 wraps mod 256: PNG's
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    raw = filtered.tobytes()
    z = zlib.compressobj(level, zlib.DEFLATED, -15)
    data = z.compress(raw) + z.flush(zlib.Z_SYNC_FLUSH)
    return Deflated(w, h, data, zlib.adler32(raw), len(raw))


def adler32_combine(first: int, second: int, second_length: int) -> int:
    """adler-32 of A + B from those of A and B (zlib's adler32_combine)."""
    rem = second_length % MOD
    s1 = ((first & 0xFFFF) + (second & 0xFFFF) + MOD - 1) % MOD
    s2 = (rem * (first & 0xFFFF) + (first >> 16) + (second >> 16) + MOD - rem) % MOD
    return s1 | (s2 << 16)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_of(parts: Sequence[Deflated]) -> bytes:
    """One PNG of `parts` stacked top to bottom (all of one width)."""
    width = parts[0].width
    if any(p.width != width for p in parts):
        raise ValueError(f"parts of widths {sorted({p.width for p in parts})}: stack one width")
    adler = 1  # of nothing
    for p in parts:
        adler = adler32_combine(adler, p.adler, p.length)
    # zlib header (deflate, 32 KB window), the pieces, an empty final block, the checksum
    stream = b"\x78\x01" + b"".join(p.data for p in parts) + b"\x03\x00" + struct.pack(">I", adler)
    header = struct.pack(">IIBBBBB", width, sum(p.height for p in parts), 8, 2, 0, 0, 0)
    return SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", stream) + _chunk(b"IEND", b"")
