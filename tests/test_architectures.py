"""Real architectures through `report` and `compare` (marker `arch`): every torchvision
classification family, timm's common ones and two `transformers` classifiers built from
configs, at reduced sizes with random weights, on a tiny image folder. Each gets the auto
layer (the last spatial stage before the pooling), non-constant maps, and a compare.json with
a grid result or its one-line skip. Skipped where torchvision, timm or transformers do not
import; .ci/run runs them in its second venv (.venv-arch), where a skip fails CI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from camlens.cam import create, pick_layer
from camlens.classifier import Classifier
from camlens.cli import main
from camlens.compare import CompareConfig, compare
from camlens.data import load_dataset
from camlens.explain import ExplainPlan
from camlens.metrics import MetricConfig
from camlens.metrics.grid import GridConfig
from camlens.pipeline import report
from conftest import CLASSES, write_image_folder

pytestmark = pytest.mark.arch
tv = pytest.importorskip("torchvision.models")
timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

K = len(CLASSES)


def _tv(name, **kw):
    return lambda: tv.get_model(name, weights=None, num_classes=K, **kw)


def _timm(name, **kw):
    return lambda: timm.create_model(name, pretrained=False, num_classes=K, **kw)


def _tv_small(cls, *args, **kw):
    return lambda: cls(*args, num_classes=K, **kw)


def _head_drawn(model):
    """torchvision's ViT starts with a zero head, whose logits depend on nothing: drawn."""
    torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    return model


# family -> (builder, image side): reduced sizes where the model's constructor allows
FAMILIES = {
    "tv-alexnet": (_tv("alexnet"), 128),  # at 64 px its last map is 1x1
    "tv-vgg": (_tv("vgg11"), 64),
    "tv-resnet": (_tv("resnet18"), 64),
    "tv-resnext": (
        _tv_small(tv.ResNet, tv.resnet.Bottleneck, [1, 1, 1, 1], groups=4, width_per_group=4),
        64,
    ),
    "tv-wide-resnet": (
        _tv_small(tv.ResNet, tv.resnet.Bottleneck, [1, 1, 1, 1], width_per_group=128),
        64,
    ),
    "tv-squeezenet": (_tv("squeezenet1_1"), 64),
    "tv-densenet": (
        _tv_small(tv.DenseNet, 8, (2, 2, 2, 2), 16),
        64,
    ),
    "tv-googlenet": (_tv("googlenet", aux_logits=False, init_weights=False), 64),
    "tv-inception": (_tv("inception_v3", aux_logits=False, init_weights=False), 128),
    "tv-shufflenet": (_tv("shufflenet_v2_x0_5"), 64),
    "tv-mobilenet-v2": (_tv("mobilenet_v2", width_mult=0.25), 64),
    "tv-mobilenet-v3": (_tv("mobilenet_v3_small"), 64),
    "tv-mnasnet": (_tv("mnasnet0_5"), 64),
    "tv-efficientnet": (_tv("efficientnet_b0"), 64),
    "tv-regnet": (_tv("regnet_x_400mf"), 64),
    "tv-convnext": (
        _tv_small(
            tv.ConvNeXt,
            [tv.convnext.CNBlockConfig(16, 32, 1), tv.convnext.CNBlockConfig(32, None, 1)],
        ),
        64,
    ),
    "tv-vit": (lambda: _head_drawn(tv.VisionTransformer(32, 8, 2, 2, 32, 64, num_classes=K)), 32),
    "tv-swin": (
        _tv_small(tv.SwinTransformer, [4, 4], 16, [1, 1], [1, 2], [4, 4], stochastic_depth_prob=0),
        64,
    ),
    "tv-maxvit": (
        _tv_small(tv.MaxVit, (64, 64), 8, 2, [16, 32], [1, 1], 8, stochastic_depth_prob=0.0),
        64,
    ),
    "timm-resnet": (_timm("resnet10t"), 64),
    "timm-efficientnet": (_timm("efficientnet_b0"), 64),
    "timm-convnext": (_timm("convnext_atto"), 64),
    "timm-swin": (
        _timm(
            "swin_tiny_patch4_window7_224",
            img_size=64,
            window_size=4,
            embed_dim=24,
            depths=(1, 1, 1, 1),
            num_heads=(1, 1, 1, 1),
        ),
        64,
    ),
    "timm-maxvit": (
        _timm(
            "maxvit_rmlp_nano_rw_256", img_size=64, embed_dim=(32, 32, 32, 32), depths=(1, 1, 1, 1)
        ),
        64,
    ),
    "timm-vit-registers": (
        _timm(
            "vit_base_patch16_reg4_gap_256",
            img_size=32,
            patch_size=8,
            embed_dim=32,
            depth=2,
            num_heads=2,
        ),
        32,
    ),
    "timm-deit-distilled": (
        _timm(
            "deit_tiny_distilled_patch16_224",
            img_size=32,
            patch_size=8,
            embed_dim=32,
            depth=2,
            num_heads=2,
        ),
        32,
    ),
}


# compare's sanity cascade re-randomises every layer (a minute and more for a ResNet18 on 2
# cores): it runs on the fixed-size and token families the grid test and layouts concern
COMPARED = {"tv-vit", "tv-swin", "timm-swin", "timm-vit-registers", "timm-deit-distilled"}
# deletion, insertion, ROAD and ARCC at a few points: the path is tested, not the numbers
FEW = MetricConfig(steps=4, road_fractions=(0.5,), arcc_fractions=(0.5,))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny image folder per image side: 3 test images a class."""
    made = {}

    def at(size):
        if size not in made:
            root = tmp_path_factory.mktemp(f"data{size}")
            write_image_folder(root, n_train=1, n_test=3, size=size)
            made[size] = root
        return made[size]

    return at


def _varies(maps: torch.Tensor) -> bool:
    """Some map of the batch is not flat."""
    return bool((maps.flatten(1).std(1) > 0).any())


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_through_report_and_compare(family, folders, tmp_path):
    build, size = FAMILIES[family]
    torch.manual_seed(0)
    model = build().eval()
    data = load_dataset(folders(size), image_size=size, progress=False)
    picked = pick_layer(model, size)
    assert picked.reaches_logits
    plan = ExplainPlan(
        methods=("gradcam", "eigencam"),
        limit=4,
        cam_batch_size=8,
        eval_batch_size=8,
        counterfactual=False,
    )
    outcome = report(model, data, tmp_path / "r", plan)
    assert (tmp_path / "r" / "report.html").is_file()
    for expl in outcome.galleries.explanations.values():
        assert expl.layers == (picked.name,)
    # Eigen-CAM's sign follows the activations: a flat map means the layer was misread. A
    # random network's Grad-CAM may be negative everywhere and flat after its ReLU (AlexNet)
    expl = outcome.galleries.explanations["eigencam"]
    assert _varies(torch.cat([expl.pred_maps[0], expl.label_maps[0]]))
    if family not in COMPARED:
        return
    plan = ExplainPlan(
        methods=("gradcam",), layers=(picked.name,), compare_limit=2, eval_batch_size=8
    )
    grid = GridConfig(count=2, min_grids=1, confidence=0.0)
    compare(model, data, tmp_path / "c", plan, CompareConfig(1, grid=grid, metrics=FEW))
    said = json.loads((tmp_path / "c" / "compare.json").read_text())
    assert said["grid"]["line"].startswith("grid test")


def _hf_vit():
    config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=K,
    )
    processor = transformers.ViTImageProcessor(
        size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.25] * 3
    )
    return transformers.ViTForImageClassification(config), processor


def _hf_convnext():
    config = transformers.ConvNextConfig(
        hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, num_labels=K
    )
    processor = transformers.ConvNextImageProcessor(
        size={"shortest_edge": 64}, crop_pct=None, image_mean=[0.5] * 3, image_std=[0.25] * 3
    )
    return transformers.ConvNextForImageClassification(config), processor


HF_LAYERS = {
    "_hf_vit": "model.vit.layers.1.layernorm_before  tokens (17, 32): 1 prefix dropped, 4x4 grid",
    "_hf_convnext": "model.convnext.encoder.stages.1  (32, 8, 8) nchw",
}


@pytest.mark.parametrize("build", [_hf_vit, _hf_convnext], ids=["vit", "convnext"])
def test_transformers_classifiers_through_the_api_and_the_cli(build, folders, tmp_path, capsys):
    """Planted: pick_layer without its LayerNorm rule (red: the ViT got its last value
    projection, v_proj, a layer inside the attention)."""
    torch.manual_seed(0)
    model, processor = build()
    model.eval()
    side = processor.size.get("height") or processor.size["shortest_edge"]
    root = folders(side)
    data = load_dataset(root, image_size=side, progress=False)
    plan = ExplainPlan(limit=4, cam_batch_size=8, counterfactual=False)
    outcome = report(model, data, tmp_path / "api", plan)
    expl = outcome.galleries.explanations["gradcam"]
    assert _varies(torch.cat([expl.pred_maps[0], expl.label_maps[0]]))
    folder = tmp_path / "saved"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    argv = ["report", "--model", f"hf:{folder}", "--data", str(root), "--no-progress"]
    code = main([*argv, "--out", str(tmp_path / "cli"), "--limit", "3", "--no-counterfactual"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"layer {HF_LAYERS[build.__name__]} (the last before" in out
    assert (tmp_path / "cli" / "report.html").is_file()


@pytest.mark.parametrize("family", ["tv-vit", "timm-vit-registers", "timm-deit-distilled", "hf"])
def test_attention_rollout_on_real_vits(family):
    """torchvision's nn.MultiheadAttention, timm's sdpa and transformers' attention each show
    their attention to rollout. Planted: F.multi_head_attention_forward not asked for its
    weights (red: torchvision's ViT refused, no attention seen)."""
    torch.manual_seed(0)
    if family == "hf":
        model, _ = _hf_vit()
        model, size = Classifier(model.eval(), (0.5,) * 3, (0.25,) * 3), 32
    else:
        build, size = FAMILIES[family]
        model = build().eval()
    layer = pick_layer(model, size).name
    maps = create("rollout", model, layer)(torch.rand(2, 3, size, size))
    assert _varies(maps)


def _val_folder(root, wnids):
    """An ImageNet-style val/<wnid>/*.JPEG of non-square photos (wide and tall), 2 per class."""
    rng = np.random.default_rng(0)
    for k, wnid in enumerate(wnids):
        (root / "val" / wnid).mkdir(parents=True)
        for i, (w, h) in enumerate(((300, 240), (240, 320))):
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8) // 4 + 60 * k
            Image.fromarray(pixels.astype(np.uint8)).save(root / "val" / wnid / f"{i}.JPEG")
    return root


def _own_eval(spec):
    """The model's eval transform as its library states it: (resize, crop, interpolation)."""
    kind, _, name = spec.partition(":")
    if kind == "torchvision":
        t = tv.get_model_weights(name).DEFAULT.transforms()
        return t.resize_size[0], t.crop_size[0], t.interpolation.value
    cfg = timm.get_pretrained_cfg(name)
    crop = cfg.input_size[-1]
    return math.floor(crop / cfg.crop_pct), crop, cfg.interpolation  # timm's transforms_factory


@pytest.mark.parametrize("spec", ["torchvision:resnet18", "timm:resnet18"])
def test_an_imagenet_val_folder_with_a_classes_file_and_the_models_own_preprocessing(
    spec, tmp_path, capsys
):
    """`camlens report --model timm:|torchvision:NAME --data <val/ only> --classes wnids.json`:
    the photos are resized and centre-cropped as the model's library evaluates it (its weights'
    transforms, timm's pretrained_cfg: not camlens's square default), said in the report, and
    the classes are named by the file. Planted: stated_size without torchvision (red: the crop
    was the photos' own size), the preprocessing fact dropped (red)."""
    from safetensors.torch import save_file

    wnids = {"n01440764": "tench", "n01443537": "goldfish", "n01484850": "great white shark"}
    root = _val_folder(tmp_path / "imagenet", list(wnids))
    (tmp_path / "wnids.json").write_text(json.dumps(wnids))
    kind, _, name = spec.partition(":")
    torch.manual_seed(0)
    if kind == "torchvision":
        model = tv.get_model(name, weights=None, num_classes=len(wnids))
    else:
        model = timm.create_model(name, pretrained=False, num_classes=len(wnids))
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    argv = ["report", "--model", spec, "--weights", str(tmp_path / "w.safetensors")]
    argv += ["--data", str(root), "--classes", str(tmp_path / "wnids.json"), "--no-progress"]
    code = main([*argv, "--out", str(tmp_path / "out"), "--limit", "2"])
    out, err = capsys.readouterr()
    assert code == 0, err
    resize, crop, interpolation = _own_eval(spec)
    assert (resize, crop) != (crop, crop)  # a real resize-then-crop, not a square resize
    html = (tmp_path / "out" / "report.html").read_text()
    assert f"resize {resize} {interpolation}, centre crop {crop}" in html
    metrics = json.loads((tmp_path / "out" / "eval" / "metrics.json").read_text())
    assert list(metrics["per_class_acc"]) == list(wnids.values())
    assert metrics["images"] == 6
