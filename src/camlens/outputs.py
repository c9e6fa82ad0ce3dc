"""What consumes the explain stream: the `Output` protocol and `consume`, the one loop that
hands each chunk to every output.

An output (the gallery, the map file, any export or viewer to come) is a context manager
that takes the stream's `(Mistakes, Explanations)` chunks in order and, after the last one,
every chunk's maps joined once. `camlens.pipeline.outputs.OUTPUTS` registers them by name
(`ExplainPlan.outputs`, `--output`): a new output is one module plus one line there.
An output's settings live here too (`GalleryConfig`), plain data without its drawing code, so
that a job's config can carry them (the report's `ReportConfig.gallery`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from camlens.evaluate import Mistakes
from camlens.explain import Explanations, concat_explanations

__all__ = ["GalleryConfig", "Output", "consume"]


@dataclass(frozen=True)
class GalleryConfig:
    """How the gallery (`camlens.gallery`) is drawn and encoded."""

    size: int = 128  # pixels per panel; 32 px images are enlarged with sharp pixels
    per_page: int = 10  # cards per card page
    per_pair_page: int = 60  # images per confusion-pair page; more go to <pair>-2.png, ...
    colormap: str = "jet"  # the seed's colour map; contrast maps always use a diverging one
    alpha: float = 0.5  # weight of the heat map over the image
    # zlib level of the PNGs: 1 is fastest; `benchmarks/explain_speed.py --png` measures the rest
    compress_level: int = 1


class Output(Protocol):
    """A consumer of one method's explain stream; entered before the first chunk, exited
    after `close` (or on an error, where it releases what it holds and writes no more)."""

    def __enter__(self) -> Output: ...

    def __exit__(self, *exc: object) -> None: ...

    def take(self, mistakes: Mistakes, maps: Explanations) -> None:
        """A chunk: the next consecutive rows of the chosen mistakes, with their maps."""

    def close(self, maps: Explanations) -> Any:
        """After the last chunk, with every chunk's maps joined: what the output wrote."""


def consume(
    chunks: Iterable[tuple[Mistakes, Explanations]], outputs: Mapping[str, Output]
) -> tuple[Explanations, dict[str, Any]]:
    """Hand each chunk to every output in turn (the stream computes each chunk once), then the
    joined maps to each `close`: (the joined maps, name -> what that output's close returned).
    No outputs: the stream is still run (e.g. a torchrun rank that explains and draws nothing)."""
    parts = []
    for mistakes, maps in chunks:
        parts.append(maps)
        for output in outputs.values():
            output.take(mistakes, maps)
    if not parts:
        raise ValueError("no mistakes to explain: the stream needs at least one chunk")
    maps = concat_explanations(parts)
    return maps, {name: output.close(maps) for name, output in outputs.items()}
