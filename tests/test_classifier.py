"""Any classifier: --model FILE.py:factory with .pt / .safetensors weights, a ViT's tokens,
the refusals, and timm: / torchvision: where those import."""

from __future__ import annotations

import csv
import textwrap

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from camlens.cam import GradCAM, HiResCAM, pick_layer
from camlens.classifier import Classifier, ModelConfig, load_weights, open_model
from camlens.cli import main
from camlens.evaluate import as_float_images
from camlens.explain import ExplainError
from camlens.model import CheckpointError
from camlens.pipeline import choose_layers, report, report_facts
from conftest import write_image_folder

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
NORM = ("--mean", "0.4,0.5,0.6", "--std", "0.2,0.25,0.3")
NET = textwrap.dedent(
    """
    from torch import nn

    def make(num_classes=10):
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes),
        )

    def three():  # no num_classes: always 3 outputs
        return make(3)

    def broken(num_classes):
        raise RuntimeError("no GPU here")

    def wide(num_classes=10):  # a hidden layer as wide as the head: its class count is ambiguous
        return nn.Sequential(
            nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(8, num_classes), nn.ReLU(), nn.Linear(num_classes, num_classes),
        )
    """
)


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """What a user brings: a model file, its weights as .pt and .safetensors, 48-px images."""
    root = tmp_path_factory.mktemp("user")
    (root / "net.py").write_text(NET)
    write_image_folder(root / "data", n_train=2, n_test=6, size=48)
    namespace: dict = {}
    exec(compile(NET, "net.py", "exec"), namespace)  # the user's own code, as the user runs it
    torch.manual_seed(0)
    model = namespace["make"](4)
    torch.save(model.state_dict(), root / "w.pt")
    save_file(model.state_dict(), root / "w.safetensors")
    torch.save(model, root / "whole.pt")  # a pickled whole model: refused
    return root, model


def test_pt_and_safetensors_load_the_same_model_at_the_data_size(user):
    root, model = user
    opened = [
        open_model(ModelConfig(f"{root}/net.py:make", root / w, MEAN, STD), root / "data")
        for w in ("w.pt", "w.safetensors")
    ]
    assert opened[0].data.image_size == 48  # the data's own size: nothing stated one
    images = as_float_images(opened[0].data.test.images)
    expected = model.eval()(
        (images - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    )
    for o in opened:
        assert torch.allclose(o.model(images), expected, atol=1e-5)


def test_report_of_a_user_model_has_the_maps_of_the_engine_called_directly(user, tmp_path):
    root, model = user
    opened = open_model(ModelConfig(f"{root}/net.py:make", root / "w.pt", MEAN, STD), root / "data")
    outcome = report(opened.model, opened.data, tmp_path, run_info=report_facts(opened))
    expl = outcome.galleries.explanations["gradcam"]
    assert expl.layers == ("model.4",)  # the ReLU before the pooling, picked
    mistakes = outcome.galleries.mistakes
    images = as_float_images(mistakes.images)
    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    with GradCAM(model.eval(), "4", normalize="pair") as cam:
        pair = cam.explain_pair((images - mean) / std, mistakes.labels)
    assert torch.allclose(expl.pred_maps[0], pair.pred.maps, atol=1e-5)
    assert torch.allclose(expl.label_maps[0], pair.label.maps, atol=1e-5)
    assert pair.pred.maps.amax() > 0  # not an all-zero engine
    html = outcome.report.read_text()
    for section in (
        'id="summary"',
        'id="confusion"',
        'id="pairs"',
        'id="gallery"',
        "Sequential",
        "net.py:make",
    ):
        assert section in html, section
    assert (tmp_path / "eval" / "misclassified.csv").is_file()


def test_cli_evaluate_explain_compare_report_take_a_factory(user, tmp_path, capsys):
    root, _ = user
    model = ("--model", f"{root}/net.py:make", "--weights", root / "w.safetensors", *NORM)
    data = ("--data", root / "data", "--no-progress")
    code, out, err = cli(capsys, "evaluate", *model, *data, "--out", tmp_path / "e")
    assert code == 0, err
    rows = list(csv.DictReader((tmp_path / "e" / "misclassified.csv").read_text().splitlines()))
    code, out, err = cli(capsys, "explain", *model, *data, "--out", tmp_path / "x", "--layer", "1")
    assert code == 0, err
    assert "layer model.1  (8, 48, 48)" in out and f"explained {len(rows)}" in out
    code, out, err = cli(
        capsys,
        "compare",
        *model,
        *data,
        "--out",
        tmp_path / "c",
        "--method",
        "gradcam",
        "--limit",
        "2",
    )
    assert code == 0, err
    assert "model.4" in out and (tmp_path / "c" / "compare.csv").is_file()
    code, out, err = cli(capsys, "report", *model, *data, "--out", tmp_path / "r", "--limit", 3)
    assert code == 0, err
    assert "last before the global pooling" in out and (tmp_path / "r" / "report.html").is_file()
    code, out, err = cli(capsys, "summary", "--model", f"{root}/net.py:make", "--classes", 4)
    assert code == 0 and "default --layer: model.4" in out


@pytest.mark.parametrize(
    "spec, weights, extra, needle",
    [
        ("net.py:make", "whole.pt", NORM, "unpickles nothing: save its weights instead"),
        ("net.py:three", "none", NORM, "outputs 3 classes but the data has 4"),
        ("net.py:broken", "none", NORM, "raised RuntimeError: no GPU here"),
        ("nowhere.py:make", "none", NORM, "model file"),
        ("net.py:make", "missing.pt", NORM, "weights file"),
        ("net.py:make", "w.pt", (), "--mean 0.485,0.456,0.406"),
        ("net.py:make", "w.pt", (*NORM, "--layer", "9"), "model.2  (8, 24, 24)"),
        ("timm:x", "none", (), "needs --weights"),
    ],
)
def test_refusals_are_one_line(user, tmp_path, capsys, spec, weights, extra, needle):
    root, _ = user
    w = () if weights == "none" else ("--weights", root / weights)
    code, out, err = cli(
        capsys,
        "explain",
        "--model",
        f"{root}/{spec}" if ".py" in spec else spec,
        *w,
        *extra,
        "--data",
        root / "data",
        "--out",
        tmp_path / "x",
        "--no-progress",
    )
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert needle in err, err
    assert not (tmp_path / "x").exists()


def test_summary_takes_the_class_count_from_the_weights_head_or_names_the_flag(
    user, tmp_path, capsys
):
    root, _ = user
    make = ("summary", "--model", f"{root}/net.py:make", "--weights")
    code, out, err = cli(capsys, *make, root / "w.safetensors")  # 4 classes; make's default 10
    assert code == 0, err
    assert [line.split()[2] for line in out.splitlines() if line.startswith("model.7 ")] == ["[4]"]
    code, out, err = cli(capsys, *make, root / "w.safetensors", "--classes", 5)  # the user's word
    assert code == 2 and "7.bias (4,) (model (5,))" in err and "--classes N" in err, err
    namespace: dict = {}
    exec(compile(NET, "net.py", "exec"), namespace)
    save_file(namespace["wide"](3).state_dict(), tmp_path / "wide.safetensors")
    wide = ("summary", "--model", f"{root}/net.py:wide", "--weights", tmp_path / "wide.safetensors")
    code, out, err = cli(capsys, *wide)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "5.weight (3, 3) (model (10, 10))" in err and "--classes N" in err, err
    code, out, err = cli(capsys, *wide, "--classes", 3)
    assert code == 0 and "default --layer" in out, err
    # with data the count is the data's: weights for 3 classes say which count they were built for
    code, out, err = cli(
        capsys, "evaluate", *wide[1:], *NORM, "--data", root / "data", "--out", tmp_path / "e"
    )
    assert code == 2 and "built for the data's 4 classes" in err, err


def test_keys_that_do_not_fit_are_named(user, tmp_path):
    _, model = user
    state = dict(model.state_dict())
    state["extra.weight"] = state.pop("7.weight")
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"missing 7\.weight; unexpected extra\.weight"):
        load_weights(model, tmp_path / "bad.pt")


# ----------------------------------------------------------------------------- tokens


class ReadsOneToken(nn.Module):
    """A ViT-shaped model whose logit reads one known patch token: its map is that cell.

    32-px images, 8-px patches: a 4x4 grid, after `prefix` tokens (class, registers).
    """

    def __init__(self, token: int, prefix: int) -> None:
        super().__init__()
        self.token, self.prefix = token, prefix
        self.patch = nn.Conv2d(3, 6, 8, 8)
        self.register = nn.Parameter(torch.randn(1, prefix, 6))
        self.mlp = nn.Sequential(nn.Linear(6, 6), nn.ReLU())
        self.head = nn.Linear(6, 3)
        nn.init.uniform_(self.head.weight, 0.5, 1.0)  # positive: the cell's map is positive

    def forward(self, images):
        tokens = self.patch(images).flatten(2).transpose(1, 2)  # (N, C, 4, 4) -> (N, 16, C)
        tokens = torch.cat([self.register.expand(len(images), -1, -1), tokens], 1)
        tokens = self.mlp(tokens + 1)  # (N, T, C)
        return self.head(tokens[:, self.prefix + self.token])


@pytest.mark.parametrize("prefix, stated", [(1, False), (10, True)])
def test_a_token_map_lights_the_token_the_logit_reads(prefix, stated):
    torch.manual_seed(0)
    inner = ReadsOneToken(token=6, prefix=prefix).eval()  # row 1, column 2
    # 10 registers + 16 patches: the largest square (25) is wrong, the stated count is right
    model = Classifier(inner, (0.5,) * 3, (0.25,) * 3, num_prefix_tokens=prefix if stated else None)
    assert pick_layer(model, 32).name == "model.mlp"
    images = torch.rand(4, 3, 32, 32)
    with HiResCAM(model, "model.mlp") as cam:
        result = cam.explain(images, torch.zeros(4, dtype=torch.long))
    assert torch.allclose(result.logits, model(images))  # the hook hands the tokens on intact
    low = result.low_res[0]  # (N, 4, 4)
    assert low.shape == (4, 4, 4)
    assert (low.flatten(1).argmax(1) == 6).all()
    assert low.flatten(1)[:, [i for i in range(16) if i != 6]].abs().max() == 0
    with GradCAM(model, "model.mlp") as cam:  # Grad-CAM runs as on a CNN
        assert cam(images).shape == (4, 32, 32)


class ClassTokenPooled(nn.Module):
    """The class token mixes in every patch, then one more per-token layer, then the head
    reads the class token: that last layer's patch tokens feed no logit."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 6, 8, 8)
        self.cls = nn.Parameter(torch.randn(1, 1, 6))
        self.mix, self.last, self.head = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, images):
        tokens = self.patch(images).flatten(2).transpose(1, 2)  # (N, C, 4, 4) -> (N, 16, C)
        tokens = self.mix(torch.cat([self.cls.expand(len(images), -1, -1), tokens], 1))
        tokens = self.last(tokens + tokens.mean(1, keepdim=True))  # (N, 17, C)
        return self.head(tokens[:, 0])


def test_the_picked_layer_is_the_last_whose_map_the_logits_use():
    model = Classifier(ClassTokenPooled(), (0.5,) * 3, (0.25,) * 3)
    assert pick_layer(model, 32).name == "model.mix"  # not model.last: its map is all zeros


@pytest.mark.parametrize("layout", [{"tokens_grid": (5, 5)}, {"num_prefix_tokens": 2}])
def test_a_token_layout_that_does_not_add_up_is_a_clear_error(layout):
    model = Classifier(ReadsOneToken(0, 1), (0.5,) * 3, (0.25,) * 3, **layout)
    with (
        pytest.raises(ValueError, match="17 tokens.*--tokens-grid HxW and --prefix-tokens K"),
        GradCAM(model, "model.mlp") as cam,
    ):
        cam(torch.rand(1, 3, 32, 32))


def test_a_wrong_prefix_count_is_an_error_not_a_silent_fall_back_to_the_patch_layer():
    model = Classifier(ReadsOneToken(0, 1), (0.5,) * 3, (0.25,) * 3, num_prefix_tokens=2)
    with pytest.raises(ValueError, match="'model.mlp' outputs 17 tokens, which are not 2 prefix"):
        pick_layer(model, 32)


def test_an_unknown_layer_lists_the_layers_a_map_can_be_read_from():
    model = Classifier(ReadsOneToken(0, 1), (0.5,) * 3, (0.25,) * 3)
    with pytest.raises(ExplainError, match=r"model.patch  \(6, 4, 4\) nchw; model.mlp.0  tokens"):
        choose_layers(model, ["nope"], 32)
    assert choose_layers(model, ["mlp"], 32) == ("model.mlp",)  # the model's own name works


# ----------------------------------------------------------------------------- timm, torchvision


@pytest.mark.parametrize(
    "spec", ["timm:resnet18", "timm:vit_tiny_patch16_224", "torchvision:resnet18"]
)
def test_timm_and_torchvision_by_name(spec, user, tmp_path, capsys):
    library, _, name = spec.partition(":")
    lib = pytest.importorskip(library)
    root, _ = user
    torch.manual_seed(0)
    if library == "timm":
        net = lib.create_model(name, pretrained=False, num_classes=4)
    else:
        net = lib.models.get_model(name, weights=None, num_classes=4)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp_path / "w.safetensors")
    norm = NORM if library == "torchvision" else ()  # timm states its own
    code, out, err = cli(
        capsys,
        "report",
        "--model",
        spec,
        "--weights",
        tmp_path / "w.safetensors",
        *norm,
        "--data",
        root / "data",
        "--out",
        tmp_path / "r",
        "--no-progress",
        "--limit",
        2,
    )
    assert code == 0, err
    assert (tmp_path / "r" / "report.html").is_file()
    if "vit" in name:
        assert "layer model.blocks.11.norm1  tokens (197, 192): 1 prefix dropped, 14x14" in out
