"""The misclassified gallery: PNG cards and pages drawn from the explain step's maps.

For each misclassified image a card shows the image, the map of the predicted class, the map of
the true class, the contrast map ("why the prediction rather than the truth", diverging
colours) and the class probabilities (true class green, prediction red), one row per layer with
its native map resolution. Pages stack many cards; a pair page gathers every image of one
(true, predicted) confusion; `index.csv` lists them all.

    draw.py   PIL drawing: panels, cards, pages, pair pages, PNG bytes
    write.py  write_gallery(explanations, mistakes, classes, out) -> out/gallery/<method>

Pictures are composed with PIL from uint8 tensors: matplotlib would cost ~0.1 s per figure,
which for hundreds of cards is minutes, against milliseconds here.
"""

from camlens.gallery.draw import GalleryConfig
from camlens.gallery.write import write_gallery

__all__ = ["GalleryConfig", "write_gallery"]
