"""The confusion figure: counts in the cells up to 30 classes, a heat map and the top pairs beyond,
in a figure whose size does not grow with K (at K = 1,000 the cell-per-class figure asked for a
68,310 x 60,588 px canvas and was killed)."""

import io

import torch
from PIL import Image

from camlens.plots import CELL_NUMBERS_UP_TO, TOP_PAIRS, plot_confusion, top_confusions


def confusion(k: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(k)
    conf = torch.randint(0, 3, (k, k), generator=g)
    return conf + torch.diag(torch.full((k,), 20))


def size(png: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(png)).size


def test_beyond_30_classes_the_figure_stops_growing():
    """Planted: CELL_NUMBERS_UP_TO raised past 40 (a cell per class at 40 classes): red."""
    k = 40  # past the 30 classes a page or figure writes numbers in
    width, height = size(plot_confusion(confusion(k), [f"class {i}" for i in range(k)]))
    assert width < 2000 and height < 1000
    # the same figure at 4x the classes: the heat map, not the canvas, takes the classes
    assert size(plot_confusion(confusion(4 * k), [f"c{i}" for i in range(4 * k)]))[1] == height


def test_up_to_30_classes_each_cell_has_its_count(tmp_path):
    small = size(plot_confusion(confusion(5), list("abcde"), tmp_path / "c.png"))
    large = size(plot_confusion(confusion(CELL_NUMBERS_UP_TO), [f"c{i}" for i in range(30)]))
    assert large[0] > 3 * small[0]  # the figure grows with the cells it writes in
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_top_confusions_by_count_then_position():
    conf = torch.tensor([[5, 2, 0], [3, 9, 2], [0, 0, 4]])
    assert top_confusions(conf, 2) == [(1, 0, 3), (0, 1, 2)]
    assert top_confusions(conf, 10) == [(1, 0, 3), (0, 1, 2), (1, 2, 2)]  # zeros left out
    assert TOP_PAIRS <= 50
