"""Layer layouts (camlens.cam.layout): a channels-last stage and a ViT's tokens are read into
(N, C, h, w) for every method, said on the layer's line, forced with layout=, refused in one
line where they cannot be read. Known answers on toy models written here."""

import pytest
import torch
from torch import nn

from camlens.cam import (
    METHODS,
    AblationCAM,
    GradCAM,
    LayoutError,
    candidate_layers,
    create,
    pick_layer,
)


class ChannelsLast(nn.Module):
    """A stem to an (N, 8, 8, C) channels-last stage (a Linear over C, as timm's Swin stages
    end), then global pooling and a linear head. With C = 8 the stage's output reads as NCHW
    too (C = h = w): only the layout says which axes are places."""

    def __init__(self, channels=8, classes=5):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, channels, 4, stride=4)  # 32 px -> 8 x 8
        self.stage = nn.Linear(channels, channels)  # on (N, 8, 8, C): channels last
        self.head = nn.Linear(channels, classes)

    def forward(self, images):
        x = self.stem(images).permute(0, 2, 3, 1)  # (N, C, 8, 8) -> (N, 8, 8, C)
        x = torch.relu(self.stage(x))
        return self.head(x.mean((1, 2)))  # (N, 8, 8, C) -> (N, C) -> (N, K)


def gradcam_by_hand(model, images, targets):
    """Grad-CAM written on the NHWC tensor itself: w_c = mean_hw dy/dA, ReLU(sum_c w_c A_c)."""
    store = {}
    hook = model.stage.register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    try:
        logits = model(images)
    finally:
        hook.remove()
    acts = store["a"]  # (N, 8, 8, C)
    (grads,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), acts)
    weights = grads.mean((1, 2))  # (N, 8, 8, C) -> (N, C)
    return torch.relu(torch.einsum("nc,nhwc->nhw", weights, acts)).detach()


@pytest.mark.parametrize("channels", [8, 6])
def test_a_channels_last_stage_gives_the_gradcam_of_its_places(channels):
    """Planted: read_layout returning nchw for every 4-D output (the bug of the issue: a Swin
    stage read as C = h, h = w, w = C): the maps differ from the hand-written Grad-CAM (red,
    both with C = h = w, where nothing else fails, and with C != h, where the shapes do)."""
    model = ChannelsLast(channels).eval()
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 1, 2, 3])
    expected = gradcam_by_hand(model, images, targets)
    assert (expected.flatten(1).std(1) > 0).sum() >= 2  # maps with places: the test can fail
    result = GradCAM(model, "stage", normalize="none").explain(images, targets)
    assert result.resolutions == ((8, 8),)
    torch.testing.assert_close(result.low_res[0], expected, atol=1e-5, rtol=1e-4)
    (picked,) = [c for c in candidate_layers(model, 32) if c.name == "stage"]
    assert picked.layout == "nhwc"
    assert picked.describe() == f"stage  (8, 8, {channels}) nhwc as ({channels}, 8, 8)"
    assert pick_layer(model, 32).name == "stage"


def test_forcing_the_wrong_layout_changes_the_map_and_a_layout_that_cannot_be_read_is_one_line():
    model = ChannelsLast(8).eval()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    auto = GradCAM(model, "stage", normalize="none").explain(images).low_res[0]
    forced = GradCAM(model, "stage", normalize="none", layout="nhwc").explain(images).low_res[0]
    wrong = GradCAM(model, "stage", normalize="none", layout="nchw").explain(images).low_res[0]
    assert torch.equal(auto, forced) and not torch.allclose(auto, wrong)
    with pytest.raises(LayoutError) as e:
        GradCAM(ChannelsLast(6).eval(), "stage", layout="tokens")(images)
    message = str(e.value)
    assert "\n" not in message and "pass --layout nhwc (layout= in the API)" in message
    with pytest.raises(ValueError, match="unknown layout 'nwhc'"):
        create("gradcam", model, "stage", layout="nwhc")


def test_ablation_cam_puts_its_ablated_maps_back_into_the_channels_last_layout():
    """Known answer on a pooled linear head after a ReLU: zeroing A_k zeroes ReLU(A)_k, so
    y_c - y_c^k = W_ck mean(ReLU(A_k)) and the map is sum_k W_ck mean(ReLU(A_k)) A_k / |y_c|.
    Planted: the (N, C, h, w) copies handed on as they are (the stage's next op then mixes
    places as channels: red)."""
    model = ChannelsLast(8).eval()
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    targets = torch.tensor([0, 2, 4])
    with torch.no_grad():
        acts = model.stage(model.stem(images).permute(0, 2, 3, 1))  # (N, 8, 8, C)
        logits = model(images)
    w = model.head.weight[targets]  # (N, C)
    score = logits.gather(1, targets[:, None]).abs()  # (N, 1)
    weights = w * acts.relu().mean((1, 2)) / score  # (N, C)
    expected = torch.relu(torch.einsum("nc,nhwc->nhw", weights, acts))
    result = AblationCAM(model, "stage", normalize="none").explain(images, targets)
    torch.testing.assert_close(result.low_res[0], expected, atol=1e-5, rtol=1e-4)


class Tokens(nn.Module):
    """A ViT-shaped toy: 4x4 patch tokens after a class token and 2 registers, one block
    (LayerNorm + MLP on the tokens, residual), the class token to the head."""

    num_prefix_tokens = 3

    def __init__(self, dim=8, classes=4):
        super().__init__()
        torch.manual_seed(0)
        self.patch = nn.Conv2d(3, dim, 8, stride=8)
        self.prefix = nn.Parameter(torch.randn(1, 3, dim))
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU())
        self.head = nn.Linear(dim, classes)

    def forward(self, images):
        tokens = self.patch(images).flatten(2).transpose(1, 2)  # (N, C, 4, 4) -> (N, 16, C)
        tokens = torch.cat([self.prefix.expand(len(images), -1, -1), tokens], 1)
        tokens = tokens + self.mlp(self.norm(tokens))  # (N, 19, C)
        mixed = tokens[:, :1] + tokens[:, 3:].mean(1, keepdim=True)  # the class token reads all
        return self.head(mixed[:, 0])


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_maps_token_and_channels_last_layers_or_refuses_in_one_line(method):
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    for model, layer in ((Tokens().eval(), "norm"), (ChannelsLast(6).eval(), "stage")):
        try:
            with create(method, model, layer, batch_size=2) as cam:
                maps = cam(images)
        except (ValueError, TypeError, RuntimeError) as e:  # a refusal: one line, saying why
            assert "\n" not in str(e)
            continue
        assert maps.shape == (2, 32, 32) and torch.isfinite(maps).all()


NET = """
import torch
from torch import nn


class ChannelsLast(nn.Module):
    def __init__(self, num_classes=4):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 4, stride=4)
        self.stage = nn.Linear(6, 6)
        self.head = nn.Linear(6, num_classes)

    def forward(self, images):
        x = torch.relu(self.stage(self.stem(images).permute(0, 2, 3, 1)))  # (N, 8, 8, 6)
        return self.head(x.mean((1, 2)))


def make(num_classes=4):
    torch.manual_seed(0)
    return ChannelsLast(num_classes)
"""


def test_the_cli_says_the_layout_on_the_layers_line_and_layout_forces_it(tmp_path, capsys):
    """--layout reaches the engine through the plan; a layout that cannot be read is one line
    on stderr naming the flag. Planted: the flag's value not passed to the engine (red)."""
    from camlens.cli import main
    from conftest import write_image_folder

    (tmp_path / "net.py").write_text(NET)
    write_image_folder(tmp_path / "data", n_train=1, n_test=2, size=32)
    argv = ["explain", "--model", f"{tmp_path}/net.py:make", "--mean", "0,0,0", "--std", "1,1,1"]
    argv += ["--data", str(tmp_path / "data"), "--no-progress", "--limit", "2"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    out, err = capsys.readouterr()
    assert "layer model.stage  (8, 8, 6) nhwc as (6, 8, 8) (the last before" in out
    assert main([*argv, "--out", str(tmp_path / "b"), "--layout", "nchw"]) == 2
    out, err = capsys.readouterr()
    assert "cannot be read as layout nchw: pass --layout nhwc" in err
    assert len(err.strip().splitlines()) == 1
