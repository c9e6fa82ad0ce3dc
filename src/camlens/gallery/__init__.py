"""The misclassified gallery: PNG cards and pages drawn from the explain step's maps.

For each misclassified image a card shows the image, the map of the predicted class, the map of
the true class, the contrast map ("why the prediction rather than the truth", diverging
colours) and the class probabilities (true class green, prediction red), one row per layer with
its native map resolution. Pages stack many cards; a pair page gathers every image of one
(true, predicted) confusion; `index.csv` lists them all.

    draw.py   numpy drawing: panels, cards, pages, pair pages (layout once per gallery); PNG bytes
    png.py    rows deflated once per card; a card's PNG and a page's PNG join the same pieces
    folder.py file names, the job a folder holds (gallery.json), index.csv
    write.py  stream_gallery(chunks, mistakes, method, classes, out) -> Gallery, chunk by chunk;
              write_gallery(explanations, mistakes, classes, out) -> out/gallery/<method>

Pictures are composed as uint8 arrays: matplotlib would cost ~0.1 s per figure, which for
hundreds of cards is minutes, against milliseconds here.
"""

from camlens.gallery.write import Gallery, GalleryWriter, stream_gallery, write_gallery
from camlens.outputs import GalleryConfig  # the settings' home: a job's config carries them

__all__ = ["Gallery", "GalleryConfig", "GalleryWriter", "stream_gallery", "write_gallery"]
