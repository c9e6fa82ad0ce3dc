"""The outputs of the explain stream: one loop hands each chunk to every registered output.

Known answers: the maps file read back equals the stream's maps (exact: the same float32
tensors saved and loaded); a recording output sees every chunk once, in order; an output left
out of the plan writes nothing; an unknown output is refused in one line.
"""

from dataclasses import replace

import pytest
import torch

from camlens.choices import OUTPUT_NAMES
from camlens.cli import main
from camlens.data import load_dataset
from camlens.explain import ExplainError, ExplainPlan, concat_explanations, stream_mistake_maps
from camlens.mapfile import read_maps
from camlens.model import ResNet18
from camlens.outputs import consume
from camlens.pipeline import OUTPUTS, write_galleries


class Recorder:
    """An output that keeps the rows of each chunk it is handed, and what close got."""

    def __init__(self) -> None:
        self.rows, self.closed, self.exited = [], None, False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.exited = True

    def take(self, mistakes, maps):
        assert len(mistakes) == len(maps)
        self.rows.append(mistakes.indices.tolist())

    def close(self, maps):
        self.closed = maps
        return len(maps)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from conftest import write_image_folder

    root = tmp_path_factory.mktemp("outputs") / "data"
    write_image_folder(root)
    data = load_dataset(root, progress=False)
    torch.manual_seed(0)
    return ResNet18(len(data.classes), width=8).eval(), data


def test_every_output_gets_every_chunk_once_in_order(tiny_mistakes):
    model, mistakes = tiny_mistakes
    plan = ExplainPlan(layers=("layer4",), cam_batch_size=4, chunk_size=4, counterfactual=False)
    chunks = list(stream_mistake_maps(model, mistakes, plan, "gradcam"))
    assert len(chunks) > 2  # several chunks, or the order proves nothing
    a, b = Recorder(), Recorder()
    maps, closed = consume(iter(chunks), {"a": a, "b": b})
    order = [c[0].indices.tolist() for c in chunks]
    assert a.rows == order and b.rows == order
    assert closed == {"a": len(mistakes), "b": len(mistakes)}
    joined = concat_explanations([c[1] for c in chunks])
    for got in (maps, a.closed, b.closed):
        assert torch.equal(got.pred_low[0], joined.pred_low[0])
    with pytest.raises(ValueError, match="at least one chunk"):
        consume(iter(()), {"a": Recorder()})


def test_the_maps_file_reads_back_the_streams_maps(tiny, tmp_path):
    model, data = tiny
    plan = ExplainPlan(layers=("layer3", "layer4"), limit=6, outputs=("maps",))
    g = write_galleries(model, data, tmp_path, plan)
    assert not (tmp_path / "gallery").exists()  # the gallery was not asked for
    assert g.folders == {} and set(g.written["gradcam"]) == {"maps"}
    rows, expl = read_maps(tmp_path / "maps" / "gradcam.safetensors")
    want = g.explanations["gradcam"]
    assert torch.equal(rows["indices"], g.mistakes.indices.cpu())
    assert torch.equal(rows["preds"], g.mistakes.preds.cpu())
    assert expl.layers == want.layers and expl.size == want.size
    assert expl.resolutions == want.resolutions
    for field in ("pred_low", "label_low", "contrast_low"):
        for got, ref in zip(getattr(expl, field), getattr(want, field), strict=True):
            assert torch.equal(got, ref), field  # the same float32 tensors, saved and loaded
    # the pixels shown are made from them exactly as from the stream's
    assert torch.equal(expl.pred_maps, want.pred_maps)


def test_the_gallery_and_the_maps_file_from_one_stream(tiny, tmp_path):
    model, data = tiny
    plan = ExplainPlan(layers=("layer4",), limit=4, outputs=("gallery", "maps"))
    g = write_galleries(model, data, tmp_path, plan)
    index = (tmp_path / "gallery" / "gradcam" / "index.csv").read_text().splitlines()
    assert len(index) == 1 + len(g.mistakes)
    _, expl = read_maps(g.written["gradcam"]["maps"])
    assert torch.equal(expl.pred_low[0], g.explanations["gradcam"].pred_low[0])


def test_outputs_are_named_once_and_checked_at_plan_time():
    assert tuple(OUTPUTS) == OUTPUT_NAMES
    with pytest.raises(ExplainError, match="unknown output 'pdf': choose from gallery, maps"):
        ExplainPlan(outputs=("gallery", "pdf"))
    assert replace(ExplainPlan(), outputs=["maps"]).outputs == ("maps",)


def test_cli_output_flag(tmp_path, capsys):
    argv = ["explain", "--checkpoint", "shipped", "--data", "sample", "--out", tmp_path / "o"]
    argv += ["--layer", "layer4", "--limit", 3, "--output", "maps", "--no-progress"]
    code = main([str(a) for a in argv])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "o" / "maps" / "gradcam.safetensors").is_file()
    assert not (tmp_path / "o" / "gallery").exists()
    with pytest.raises(SystemExit) as e:  # refused by the flag, as argparse refuses: one line
        main([str(a) for a in [*argv[:-3], "--output", "pdf", "--no-progress"]])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unknown output 'pdf': choose from gallery, maps" in err
    assert len(err.strip().splitlines()) == 1
