import ast
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import camlens
from camlens.cam import GradCAM
from camlens.explain import ExplainError, ExplainPlan, mistake_maps, select_mistakes
from conftest import threads

CLASSES = tuple(f"k{i}" for i in range(5))
PACKAGE = Path(camlens.__file__).parent


def test_select_filters_sorts_and_limits(tiny_mistakes):
    _, m = tiny_mistakes
    some_label = CLASSES[int(m.labels[0])]
    chosen = select_mistakes(m, CLASSES, label_name=some_label)
    assert len(chosen) == int((m.labels == int(m.labels[0])).sum())
    assert all(CLASSES[t] == some_label for t in chosen.labels.tolist())
    some_pred = CLASSES[int(m.preds[0])]
    chosen = select_mistakes(m, CLASSES, pred_name=some_pred)
    assert len(chosen) == int((m.preds == int(m.preds[0])).sum())
    by_margin = select_mistakes(m, CLASSES, sort="margin", limit=4)
    assert len(by_margin) == 4
    assert torch.all(by_margin.margins[:-1] >= by_margin.margins[1:])
    assert by_margin.margins[0] == m.margins.max()
    with pytest.raises(ExplainError, match="k0, k1"):
        select_mistakes(m, CLASSES, pred_name="zebra")
    with pytest.raises(ExplainError, match="confidence, margin, index"):
        select_mistakes(m, CLASSES, sort="loudest")


def test_explanations_equal_the_engine_on_each_image(tiny_mistakes):
    model, m = tiny_mistakes
    plan = ExplainPlan(layers=["layer3", "layer4"], cam_batch_size=7)
    expl = mistake_maps(model, m.images, m.labels, plan)
    assert expl.pred_maps.shape == (2, len(m), 32, 32) and expl.resolutions == ((8, 8), (4, 4))
    assert torch.equal(expl.logits.argmax(1), m.preds)
    with GradCAM(model, layer="layer4", normalize="none") as cam:
        raw_label = cam.explain(m.images.float() / 255, targets=m.labels)
    assert torch.allclose(expl.label_max[1], raw_label.raw_max[0], rtol=1e-4, atol=1e-6)
    # "pair" scale: an image's stronger map reaches 1, the weaker one stays below
    peak = torch.maximum(expl.pred_maps[1].amax((1, 2)), expl.label_maps[1].amax((1, 2)))
    assert torch.allclose(peak[peak > 0], torch.ones_like(peak[peak > 0]), atol=1e-5)
    assert expl.contrast_maps is not None and expl.contrast_maps.min() < 0


def test_predicted_maps_explain_the_stated_predictions(tiny_mistakes):
    """With TTA the stated prediction need not be the arg-max: the map must follow the statement."""
    model, m = tiny_mistakes
    stated = (m.preds + 1) % 5
    plan = ExplainPlan(layers=["layer4"])
    expl = mistake_maps(model, m.images, m.labels, plan, preds=stated)
    with GradCAM(model, layer="layer4", normalize="none") as cam:
        ref = cam.explain(m.images.float() / 255, targets=stated)
    assert torch.allclose(expl.pred_max[0], ref.raw_max[0], rtol=1e-4, atol=1e-6)
    argmax = mistake_maps(model, m.images, m.labels, plan)
    assert not torch.allclose(argmax.pred_max[0], expl.pred_max[0])


def test_bf16_precision_reaches_the_engine(tiny_mistakes):
    model, m = tiny_mistakes
    fp32 = mistake_maps(model, m.images, m.labels, ExplainPlan(layers=["layer4"]))
    bf16 = mistake_maps(
        model, m.images, m.labels, ExplainPlan(layers=["layer4"], cam_precision="bf16")
    )
    assert bf16.pred_maps.dtype == torch.float32  # maps are combined in fp32 either way
    assert not torch.equal(bf16.pred_max, fp32.pred_max)  # the forward pass did run in bf16
    assert torch.allclose(bf16.pred_max, fp32.pred_max, rtol=0.1, atol=1e-3)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"methods": ["gradcam+++"]}, "gradcam++"),  # the message lists the valid methods
        ({"layers": ["layer9"]}, "layer3.1.conv2"),  # ... and the model's layers
        ({"layers": []}, "layer4"),
        ({"layers": ["layer4", "layer4"]}, "twice"),
        ({"cam_precision": "fp8"}, "fp32, bf16"),
        ({"cam_batch_size": 0}, "--cam-batch-size must be >= 1"),  # the flag, not the field
        ({"sort": "loudest"}, "confidence, margin, index"),
    ],
)
def test_what_cannot_be_explained_is_a_one_line_user_error(tiny_mistakes, kwargs, needle):
    model, _ = tiny_mistakes
    with pytest.raises(ExplainError) as error:  # the plan alone, or the plan against the model
        ExplainPlan(**{"layers": ["layer4"], **kwargs}).check(model)
    assert needle in str(error.value) and "\n" not in str(error.value)


def _camlens_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_the_report_gets_its_maps_without_the_gallery_drawing_code():
    """The explain step draws nothing; the report reads its maps, not the gallery's pictures."""
    assert not {n for n in _camlens_imports(PACKAGE / "explain.py") if n.startswith("PIL")}
    for path in (PACKAGE / "report").glob("*.py"):
        imported = _camlens_imports(path)
        assert not {n for n in imported if n.startswith("camlens.gallery")}, path.name


def test_maps_kept_at_native_resolution_give_the_engines_pixels(tiny_mistakes):
    """Explanations keep (M, h, w) maps and upsample + normalise on demand: the same pixels."""
    model, m = tiny_mistakes
    plan = ExplainPlan(layers=["layer3", "layer4"], cam_batch_size=7)
    expl = mistake_maps(model, m.images, m.labels, plan, "gradcam")
    assert [tuple(t.shape) for t in expl.pred_low] == [(len(m), 8, 8), (len(m), 4, 4)]
    with GradCAM(model, layer=["layer3", "layer4"], normalize="pair", batch_size=7) as cam:
        pair = cam.explain_pair(m.images.float() / 255, m.labels)
    assert torch.equal(expl.pred_maps, pair.pred.layer_maps)
    assert torch.equal(expl.label_maps, pair.label.layer_maps)
    assert torch.equal(expl.contrast_maps, pair.contrast.layer_maps)
    some = torch.tensor([3, 0])
    assert torch.equal(expl.select(some).label_maps, pair.label.layer_maps[:, some])


def _counterfactuals(model, m, plan, monkeypatch, world, rank):
    """Every chunk's counterfactual test as rank `rank` of `world` computes and contributes it
    (the gather's collective replaced by this rank's own rows)."""
    from camlens import distributed
    from camlens import explain as explain_module

    for mod in (distributed, explain_module):
        monkeypatch.setattr(mod, "world_size", lambda: world)
    monkeypatch.setattr(distributed, "rank", lambda: rank)
    monkeypatch.setattr(explain_module, "gather", lambda t, dim=0: t)
    return [e.counterfactual for _, e in explain_module.stream_mistake_maps(model, m, plan)]


@pytest.mark.layout
def test_counterfactual_under_torchrun_equals_one_process(tiny_mistakes, monkeypatch):
    """Each rank tests its own rows of a chunk; in rank order they are one process's test,
    whatever the chunks (per-image seeds), so the gathered columns are the same."""
    from camlens.explain import concat_explanations, stream_mistake_maps

    model, m = tiny_mistakes
    plan = ExplainPlan(layers=["layer4"], cam_batch_size=3, chunk_size=4, counterfactual=True)
    # one process in chunks of one batch (3), two ranks in chunks of 2 x 6
    chunks = [e for _, e in stream_mistake_maps(model, m, replace(plan, chunk_size=None))]
    one = concat_explanations(chunks)
    ranks = [_counterfactuals(model, m, plan, monkeypatch, 2, r) for r in range(2)]
    assert len(ranks[0]) < len(chunks) / 2  # cut otherwise
    for name in ("margin", "margin_map", "margin_random", "preds_map", "preds_random"):
        parts = [getattr(cf, name) for chunk in zip(*ranks, strict=True) for cf in chunk]
        assert torch.allclose(torch.cat(parts), getattr(one.counterfactual, name), atol=1e-5)
    assert one.counterfactual.preds.tolist() == m.preds.tolist()


@pytest.mark.layout
def test_maps_and_counterfactual_in_chunks_are_those_of_one_call_bit_for_bit(tiny_mistakes):
    """Exact by construction, on any CPU: a chunk is whole CAM batches and the counterfactual
    runs a CAM batch at a time, so each image goes through the same ops in the same batch in
    the same process. Planted: seeds by row of the call, not test index: red. (All rows in one
    call, flat across the batches, stays green on a Xeon whose kernels do not depend on the
    batch; another CPU's do, which is why the test runs a batch at a time.)"""
    from camlens.explain import concat_explanations, mistake_counterfactual, stream_mistake_maps

    model, m = tiny_mistakes
    plan = ExplainPlan(layers=["layer3", "layer4"], cam_batch_size=3, chunk_size=4)
    whole = mistake_maps(model, m.images, m.labels, plan, preds=m.preds)
    whole_cf = mistake_counterfactual(model, m, whole, plan)
    chunks = [e for _, e in stream_mistake_maps(model, m, plan)]
    assert len(chunks) > 2
    joined = concat_explanations(chunks)
    maps = whole.pred_low + whole.contrast_low, joined.pred_low + joined.contrast_low
    assert all(torch.equal(a, b) for a, b in zip(*maps, strict=True))
    for name in ("margin", "margin_map", "margin_random", "preds_map", "preds_random"):
        assert torch.equal(getattr(whole_cf, name), getattr(joined.counterfactual, name)), name


@pytest.mark.layout
def test_another_thread_count_gives_the_same_decisions_and_maps_to_rounding(tiny_mistakes):
    """Across thread counts (or CPUs, or batch shapes) oneDNN may round otherwise: the maps and
    logits are then equal to fp32 rounding, and every decision exactly. The counterfactual's
    margins after removing a map's top pixels are equal only to what rounding can reorder:
    pixels whose values tie but for rounding (upsampling makes many) go in either order, which
    moved a margin of ~0.2 by 2.4e-4 under tests/rounding's simulated CPU, hence 1e-3 here.
    On a CPU whose kernels ignore the thread count this is exact; .ci/run runs it under the
    simulation too. Planted: the counterfactual's seeds drawn by thread count: red."""
    from camlens.explain import concat_explanations, stream_mistake_maps

    model, m = tiny_mistakes
    plan = ExplainPlan(layers=["layer3", "layer4"], cam_batch_size=4, counterfactual=True)
    runs = []
    for n in (1, 2):
        with threads(n):
            runs.append(concat_explanations([e for _, e in stream_mistake_maps(model, m, plan)]))
    a, b = runs
    maps = [e.pred_low + e.label_low + e.contrast_low for e in runs]
    for x, y in zip(*maps, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)  # maps in [0, 1] (or [-1, 1])
    torch.testing.assert_close(a.logits, b.logits, rtol=1e-5, atol=1e-5)
    cf, other = a.counterfactual, b.counterfactual
    torch.testing.assert_close(cf.margin, other.margin, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cf.margin_random, other.margin_random, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cf.margin_map, other.margin_map, rtol=0, atol=1e-3)
    for name in ("preds", "preds_map", "preds_random"):  # decisions: exactly
        assert torch.equal(getattr(cf, name), getattr(other, name)), name
