"""The outputs of the explain stream, registered in one place: name -> how to open it.

Each opens from an `OutputJob` and is a `camlens.outputs.Output`. A new output (an export, a
viewer's cache) is one module and one line here, plus its name in `choices.OUTPUT_NAMES` so
that the torch-free plan and --help know it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from camlens.choices import OUTPUT_NAMES
from camlens.evaluate import Mistakes
from camlens.gallery import GalleryConfig, GalleryWriter
from camlens.mapfile import MapFile
from camlens.outputs import Output

__all__ = ["OUTPUTS", "OutputJob"]


@dataclass(frozen=True)
class OutputJob:
    """What every output of one method's stream is opened with."""

    out: Path  # the job's folder
    method: str
    mistakes: Mistakes  # the chosen mistakes, with their images, in stream order
    classes: Sequence[str]
    gallery: GalleryConfig | None = None  # None: GalleryConfig()
    progress: bool = False


OUTPUTS: dict[str, Callable[[OutputJob], Output]] = {
    "gallery": lambda job: GalleryWriter(
        job.out, job.mistakes, job.method, job.classes, job.gallery, progress=job.progress
    ),
    "maps": lambda job: MapFile(job.out / "maps" / f"{job.method}.safetensors", job.mistakes),
}
assert tuple(OUTPUTS) == OUTPUT_NAMES, "an output is registered here and named in choices"
