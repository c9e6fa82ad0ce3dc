"""The report's "Maps across training": the strips `camlens.epochs` drew, as it wrote them."""

from __future__ import annotations

from camlens.report.compute import ReportData
from camlens.report.markup import esc

__all__ = ["epochs_section"]


def epochs_section(data: ReportData) -> str:
    """The strips of `camlens.epochs`: the final mistakes' maps at each kept epoch."""
    e = data.over_epochs
    if e is None:
        return ""
    epochs = ", ".join(str(x) for x in e["epochs"])
    return (
        '<section id="epochs"><h2>Maps across training</h2><p class="note">The final model\'s '
        f"{len(e['images'])} most confident mistakes, explained by the weights kept at epochs "
        f"{esc(epochs)} ({esc(e['method'])} at {esc(e['layer'])}): per image the map of the final "
        "prediction (red) and of the true class (green) at each epoch, on one scale, with that "
        "epoch's probability of each class. When did the model start to look there, and when "
        "did the mistake appear?</p>"
        f'<img class="curves" alt="maps across training" src="data:image/png;base64,{e["png"]}">'
        "</section>"
    )
