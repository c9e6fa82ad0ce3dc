import errno
import json
import pickle
import tempfile

import pytest
import torch
from torch import nn

from camlens.atomic import WriteError
from camlens.cam import find_layer
from camlens.model import (
    NORMS,
    CheckpointError,
    ResNet18,
    layer_names,
    load_checkpoint,
    save_checkpoint,
    summary,
)

META = {"classes": [f"c{i}" for i in range(10)], "image_size": 32, "epoch": 3}


@pytest.mark.parametrize("norm", NORMS)
def test_parameter_count_is_the_cifar_resnet18s(norm):
    model = ResNet18(10, norm)
    assert sum(p.numel() for p in model.parameters()) == 11_173_962


def test_norm_choice_builds_the_right_layers():
    assert isinstance(ResNet18(norm="batch").layer3[0].bn1, nn.BatchNorm2d)
    layer = ResNet18(norm="layer").layer3[0].bn1
    group = ResNet18(norm="group").layer3[0].bn1
    assert isinstance(layer, nn.GroupNorm) and layer.num_groups == 1
    assert isinstance(group, nn.GroupNorm) and group.num_groups == 32
    with pytest.raises(ValueError, match="batch, layer, group"):
        ResNet18(norm="instance")


def test_stage_shapes_and_projection_shortcuts():
    model = ResNet18(width=8).eval()
    shapes = {}
    for name in ("layer1", "layer2", "layer3", "layer4"):
        find_layer(model, name).register_forward_hook(
            lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape[1:]))
        )
    model(torch.rand(2, 3, 32, 32))
    assert shapes == {
        "layer1": (8, 32, 32),
        "layer2": (16, 16, 16),
        "layer3": (32, 8, 8),
        "layer4": (64, 4, 4),
    }
    assert len(model.layer1[0].shortcut) == 0 and len(model.layer2[0].shortcut) == 2


def test_model_normalises_its_own_input():
    model = ResNet18(width=8, mean=(0.2, 0.4, 0.6), std=(0.5, 0.25, 0.125)).eval()
    x = torch.rand(2, 3, 32, 32)
    ref = model.conv1(
        (x - torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1))
        / torch.tensor([0.5, 0.25, 0.125]).view(1, 3, 1, 1)
    )
    seen = {}
    model.conv1.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    model(x)
    assert torch.allclose(seen["out"], ref, atol=1e-6)


def test_layers_by_dotted_name_and_a_helpful_error():
    model = ResNet18(width=8)
    assert "layer3.1.conv2" in layer_names(model)
    assert find_layer(model, "layer4.1.conv2") is model.layer4[1].conv2
    with pytest.raises(KeyError, match="layer3.1.conv2") as err:
        find_layer(model, "layer9")
    assert "layer9" in str(err.value)


def test_summary_lists_layers_shapes_and_total():
    text = summary(ResNet18())
    assert "total parameters: 11,173,962" in text
    line = next(row for row in text.splitlines() if row.startswith("layer4 "))
    assert "[512, 4, 4]" in line


@pytest.mark.parametrize("norm", NORMS)
def test_checkpoint_round_trip(tmp_path, norm):
    torch.manual_seed(0)
    model = ResNet18(10, norm, width=8, mean=(0.1, 0.2, 0.3), std=(0.3, 0.2, 0.1)).eval()
    if norm == "batch":  # non-trivial running statistics must survive too
        model.bn1.running_mean.uniform_(-1, 1)
    save_checkpoint(model, tmp_path / "ck", META)
    loaded, meta = load_checkpoint(tmp_path / "ck.safetensors")
    x = torch.rand(3, 3, 32, 32)
    assert torch.equal(model(x), loaded(x))
    assert meta["norm"] == norm and meta["classes"] == META["classes"] and meta["width"] == 8
    assert not loaded.training


def test_half_precision_checkpoint_is_half_the_size_and_close(tmp_path):
    model = ResNet18(width=16).eval()
    full = save_checkpoint(model, tmp_path / "full", META)
    half = save_checkpoint(model, tmp_path / "half", META, dtype=torch.float16)
    assert half.stat().st_size < 0.55 * full.stat().st_size
    loaded, _ = load_checkpoint(half)
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(model(x), loaded(x), atol=1e-2, rtol=1e-2)


def test_checkpoint_errors_are_clear(tmp_path):
    model = ResNet18(width=8)
    save_checkpoint(model, tmp_path / "ck", META)
    meta = json.loads((tmp_path / "ck.json").read_text())
    (tmp_path / "ck.json").write_text(json.dumps({**meta, "epoch": 4}))
    with pytest.raises(CheckpointError, match="different saves"):
        load_checkpoint(tmp_path / "ck.safetensors")
    (tmp_path / "ck.json").write_text(json.dumps({**meta, "width": 16}))
    with pytest.raises(CheckpointError, match="shape"):
        load_checkpoint(tmp_path / "ck.safetensors")
    (tmp_path / "ck.json").write_text(json.dumps({**meta, "arch": "vgg11"}))
    with pytest.raises(CheckpointError, match="vgg11"):
        load_checkpoint(tmp_path / "ck.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_a_pickle_posing_as_weights_is_never_unpickled(tmp_path):
    model = ResNet18(width=8)
    save_checkpoint(model, tmp_path / "ck", META)
    (tmp_path / "ck.safetensors").write_bytes(pickle.dumps(model.state_dict()))
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "ck.safetensors")


def test_a_full_disk_leaves_the_previous_pair_whole(tmp_path, monkeypatch):
    save_checkpoint(ResNet18(width=8), tmp_path / "ck", META)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real = tempfile.mkstemp

    def full_disk_at_the_json(*args, prefix: str = "", **kwargs):
        if prefix.startswith(".ck.json"):  # the second file of the pair
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, prefix=prefix, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", full_disk_at_the_json)
    with pytest.raises(WriteError, match=r"ck\.json: No space left on device \(ENOSPC\)"):
        save_checkpoint(ResNet18(width=8), tmp_path / "ck", {**META, "epoch": 9})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temporaries left
    assert load_checkpoint(tmp_path / "ck.safetensors")[1]["epoch"] == 3


# name, norm, the full test accuracy `camlens evaluate` gives it, a floor on the bundled sample
SHIPPED = [("shipped", "batch", 0.92, 0.88), ("shipped-layer", "layer", 0.863, 0.82)]


@pytest.mark.parametrize("name, norm, accuracy, _", SHIPPED)
def test_the_shipped_models_are_described_and_load(name, norm, accuracy, _):
    model, meta = load_checkpoint(name)
    assert sum(p.numel() for p in model.parameters()) == 11_173_962
    assert meta["norm"] == model.norm == norm
    assert meta["data_label"] == "CIFAR-10 (JPEG q75)" and meta["weights_dtype"] == "fp16"
    assert meta["recipe"]["epochs"] == meta["epoch"] == len(meta["history"])
    assert meta["history"][-1]["test_acc"] == meta["metrics"]["test_acc"]
    assert meta["evaluation"]["test_acc"] >= accuracy  # as camlens evaluate gives it


@pytest.mark.slow
@pytest.mark.parametrize("name, _, __, floor", SHIPPED)
def test_the_shipped_models_are_accurate_on_the_bundled_sample(name, _, __, floor):
    from camlens.data import load_dataset
    from camlens.evaluate import predict

    model, _ = load_checkpoint(name)
    sample = load_dataset("sample", progress=False)
    logits = predict(model, sample.test.images, precision="bf16")
    assert (logits.argmax(1) == sample.test.labels).float().mean() > floor


@pytest.mark.parametrize("norm", NORMS)
def test_zero_init_residual_makes_each_block_start_as_identity_plus_shortcut(norm):
    torch.manual_seed(0)
    model = ResNet18(norm=norm, width=8, zero_init_residual=True).eval()
    block = model.layer2[1]  # no projection: output = relu(x + residual)
    x = torch.rand(2, 16, 16, 16)
    assert torch.allclose(block(x), torch.relu(x)), "the residual branch must start at zero"
    assert not torch.allclose(ResNet18(norm=norm, width=8).eval().layer2[1](x), torch.relu(x))
