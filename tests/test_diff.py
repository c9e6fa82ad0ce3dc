"""`camlens diff`: two models side by side, checked against sets computed independently."""

import json

import pytest
import torch

from camlens.cli import main
from camlens.data import Split
from camlens.diff import GROUPS, TARGETS, diff_models, top_iou, write_diff
from camlens.evaluate import predict
from camlens.explain import ExplainPlan
from camlens.metrics import spearman
from camlens.model import ResNet18, save_checkpoint

CLASSES = ("cat", "dog", "frog", "ship", "truck")
LAYERS = ("layer3", "layer4")


def _model(seed: int) -> ResNet18:
    torch.manual_seed(seed)
    model = ResNet18(len(CLASSES), "batch", 8).eval()
    with torch.no_grad():  # untrained logits barely depend on the image; make them
        model.linear.weight.mul_(30)
    return model


@pytest.fixture(scope="module")
def split():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=g)
    return Split(images, torch.arange(40) % len(CLASSES))


@pytest.fixture(scope="module")
def two(split, one_thread):
    a, b = _model(0), _model(1)
    return a, b, diff_models(a, b, split, CLASSES, ExplainPlan(layers=LAYERS), cards=5)


def test_groups_match_sets_computed_from_the_predictions(split, two):
    a, b, d = two
    wrong = [
        set((predict(m, split.images).argmax(1) != split.labels).nonzero().flatten().tolist())
        for m in (a, b)
    ]
    assert set(d.groups["shared"].tolist()) == wrong[0] & wrong[1]
    assert set(d.groups["only_a"].tolist()) == wrong[0] - wrong[1]
    assert set(d.groups["only_b"].tolist()) == wrong[1] - wrong[0]
    assert all(d.groups[g].numel() for g in GROUPS), "the fixture should fill every group"
    for g in GROUPS:  # counts per true class add up to the group
        assert (
            d.per_class[g].tolist()
            == torch.bincount(split.labels[d.groups[g]], minlength=len(CLASSES)).tolist()
        )
    pa, pb = (predict(m, split.images[d.groups["shared"]]).argmax(1) for m in (a, b))
    assert d.same_wrong_class.tolist() == (pa == pb).tolist()


def test_a_model_against_itself_agrees_everywhere(split, one_thread):
    a = _model(0)
    d = diff_models(a, _model(0), split, CLASSES, ExplainPlan(layers=LAYERS), cards=3)
    assert d.groups["only_a"].numel() == d.groups["only_b"].numel() == 0
    assert d.groups["shared"].numel() > 0 and bool(d.same_wrong_class.all())
    for layer in LAYERS:
        for t in TARGETS:
            for metric in ("spearman", "iou"):
                v = d.agreement[layer][t][metric]
                v = v[~v.isnan()]  # flat maps (nothing to rank) are left out, not scored 0
                assert v.numel() > 0 and torch.allclose(v, torch.tensor(1.0)), (layer, t, metric)


def test_agreement_is_that_of_the_two_models_maps(split, two):
    """Spearman of each shared mistake's maps, recomputed from each model's own engine call."""
    from camlens.cam import create

    a, b, d = two
    idx = d.groups["shared"]
    x = split.images[idx].float() / 255
    maps = []
    for m in (a, b):
        with create("gradcam", m, "layer4") as engine:
            maps.append(engine(x, split.labels[idx]))
    flat = torch.stack([m.flatten(1).amax(1) == m.flatten(1).amin(1) for m in maps]).any(0)
    got = d.agreement["layer4"]["label"]
    assert got["spearman"].isnan().tolist() == flat.tolist()
    assert torch.allclose(got["spearman"][~flat], spearman(*maps)[~flat], atol=1e-5)
    assert torch.allclose(got["iou"][~flat], top_iou(*maps)[~flat], atol=1e-6)
    assert (~flat).sum() >= 3, "the fixture should have maps to compare"


def test_top_iou_known_answers():
    a = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])
    assert top_iou(a, a, 0.5).item() == 1.0
    assert top_iou(a, torch.tensor([[[1.0, 2.0], [3.0, 4.0]]]), 0.5).item() == 0.0
    assert top_iou(a, torch.tensor([[[4.0, 1.0], [3.0, 2.0]]]), 0.5).item() == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="top"):
        top_iou(a, a, 0.0)


def test_page_and_json_are_written_together(two, tmp_path):
    _, _, d = two
    files = write_diff(d, tmp_path / "out")
    stats = json.loads(files["diff.json"].read_text())
    assert stats["mistakes"] == {g: d.groups[g].numel() for g in GROUPS}
    assert set(stats["agreement"]) == {
        f"{lay} {t} {m}" for lay in LAYERS for t in TARGETS for m in ("spearman", "iou")
    }
    page = files["diff.html"].read_text()
    assert "both wrong" in page and "only A wrong" in page and "only B wrong" in page
    assert page.count('class="item"') == sum(min(5, d.groups[g].numel()) for g in GROUPS)
    assert "http://" not in page and "https://" not in page  # self-contained


def _cli(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_folder):
    from camlens.data import load_dataset

    classes = list(load_dataset(tiny_folder, progress=False).classes)
    folder = tmp_path_factory.mktemp("ckpts")
    paths = []
    for seed, norm in ((0, "batch"), (1, "layer")):
        torch.manual_seed(seed)
        path = folder / f"{norm}.safetensors"
        save_checkpoint(
            ResNet18(len(classes), norm, 8),
            path,
            {"classes": classes, "image_size": 32, "epoch": 0, "norm": norm},
        )
        paths.append(path)
    return paths


def test_cli_writes_the_page_named_after_the_norms(
    checkpoints, tiny_folder, tmp_path, capsys, one_thread
):
    out = tmp_path / "out"
    code, stdout, err = _cli(
        capsys,
        "diff",
        "--checkpoint",
        checkpoints[0],
        "--checkpoint",
        checkpoints[1],
        "--data",
        tiny_folder,
        "--out",
        out,
        "--device",
        "cpu",
        "--no-progress",
        "--limit",
        "2",
    )
    assert code == 0, err
    assert json.loads((out / "diff.json").read_text())["names"] == ["batch norm", "layer norm"]
    assert "diff.html" in stdout


@pytest.mark.parametrize(
    "flags, words",
    [
        ((), "give --checkpoint twice"),
        (("--limit", "0"), "--cards must be >= 1"),
        (("--layer", "layer9"), "layer9"),
        (("--names", "one"), "--names takes two names"),
        (("--method", "gradcam,layercam"), "name one"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    checkpoints, tiny_folder, tmp_path, capsys, flags, words
):
    second = () if not flags else ("--checkpoint", checkpoints[1])
    out = tmp_path / "out"
    code, _, err = _cli(
        capsys,
        "diff",
        "--checkpoint",
        checkpoints[0],
        *second,
        "--data",
        tiny_folder,
        "--out",
        out,
        "--device",
        "cpu",
        "--no-progress",
        *flags,
    )
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
