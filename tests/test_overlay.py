"""camlens.overlay: colouring, blending and display upscaling, checked against matplotlib."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib import colormaps

from camlens.overlay import COLORMAPS, colorize, colormap_table, heatmap_rgba, overlay


def mpl_uint8(name: str, values) -> torch.Tensor:
    """matplotlib's own colours for `values`, as uint8 RGB."""
    rgba = colormaps[name](np.asarray(values, dtype=np.float64))
    return torch.tensor(np.round(rgba[..., :3] * 255), dtype=torch.uint8)


@pytest.mark.parametrize("name", COLORMAPS)
def test_colormap_endpoints_and_middle_match_matplotlib(name):
    table = colormap_table(name)
    assert table.shape == (256, 3) and table.dtype == torch.float32
    maps = torch.tensor([[[0.0, 1.0, 128 / 255]]])
    torch.testing.assert_close(colorize(maps, name)[0, 0], mpl_uint8(name, [0.0, 1.0, 128 / 255]))


def test_signed_maps_use_the_diverging_middle_for_zero():
    maps = torch.tensor([[[-1.0, 0.0, 1.0]]])
    out = colorize(maps, signed=True)  # RdBu_r by default
    torch.testing.assert_close(out[0, 0], mpl_uint8("RdBu_r", [0.0, 128 / 255, 1.0]))
    assert out[0, 0, 0, 2] > out[0, 0, 0, 0] and out[0, 0, 2, 0] > out[0, 0, 2, 2]  # blue, red


def test_shapes_dtypes_and_device():
    images = torch.rand(3, 3, 8, 8)
    maps = torch.rand(3, 8, 8)
    out = overlay(images, maps)
    assert out.shape == (3, 8, 8, 3) and out.dtype == torch.uint8
    assert overlay(images, maps, size=40).shape == (3, 40, 40, 3)
    assert overlay(images, maps, size=(16, 24)).shape == (3, 16, 24, 3)
    assert overlay(images, torch.rand(3, 2, 2), size=32).shape == (3, 32, 32, 3)
    rgba = heatmap_rgba(maps, size=16)
    assert rgba.shape == (3, 16, 16, 4) and rgba.dtype == torch.uint8


def test_alpha_zero_is_the_image_and_alpha_one_the_colormap():
    images = torch.rand(2, 3, 8, 8)
    maps = torch.rand(2, 8, 8)
    as_uint8 = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    torch.testing.assert_close(overlay(images, maps, alpha=0.0), as_uint8)
    torch.testing.assert_close(
        overlay(images, maps, alpha=1.0, colormap="turbo"), colorize(maps, "turbo")
    )
    half = overlay(images, maps, alpha=0.5, colormap="viridis").float()
    expected = (as_uint8.float() + colorize(maps, "viridis").float()) / 2
    assert (half - expected).abs().max() <= 1.0  # rounding only


def test_nearest_upscaling_keeps_pixel_blocks_and_map_is_smooth():
    images = torch.rand(2, 3, 4, 4)
    maps = torch.rand(2, 4, 4)
    out = overlay(images, maps, alpha=0.0, size=16)
    blocks = out.view(2, 4, 4, 4, 4, 3)  # (N, 4 rows, 4 each, 4 cols, 4 each, 3)
    assert (blocks == blocks[:, :, :1, :, :1]).all()
    torch.testing.assert_close(
        out[:, ::4, ::4], (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    )
    colour = overlay(images, maps, alpha=1.0, size=16, colormap="viridis")
    # bilinear: the map takes more distinct values than the 4 x 4 source has
    assert len(torch.unique(colour[0].reshape(-1, 3), dim=0)) > 16


def test_rgba_alpha_follows_the_map():
    maps = torch.tensor([[[0.0, 0.5], [1.0, 0.25]]])
    rgba = heatmap_rgba(maps, colormap="inferno")
    torch.testing.assert_close(rgba[0, ..., 3], torch.tensor([[0, 128], [255, 64]]).byte())
    torch.testing.assert_close(rgba[..., :3], colorize(maps, "inferno"))
    signed = heatmap_rgba(torch.tensor([[[-1.0, 0.0, 0.5]]]), signed=True, opacity=0.5)
    torch.testing.assert_close(signed[0, 0, :, 3], torch.tensor([128, 0, 64]).byte())


def test_uint8_images_and_errors():
    images = torch.randint(0, 256, (1, 3, 4, 4), dtype=torch.uint8)
    out = overlay(images, torch.rand(1, 4, 4), alpha=0.0)
    torch.testing.assert_close(out, images.permute(0, 2, 3, 1))
    with pytest.raises(ValueError, match="unknown colormap"):
        colorize(torch.rand(1, 2, 2), "no-such-map")
    with pytest.raises(ValueError, match="alpha"):
        overlay(torch.rand(1, 3, 2, 2), torch.rand(1, 2, 2), alpha=1.5)
    with pytest.raises(ValueError, match="2 maps for 1 images"):
        overlay(torch.rand(1, 3, 2, 2), torch.rand(2, 2, 2))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        colorize(torch.rand(2, 2))


def test_enlarge_keeps_pixel_blocks_and_equals_overlay_at_alpha_0():
    from camlens.overlay import enlarge

    images = torch.rand(3, 3, 4, 4)
    big = enlarge(images, 12)
    assert big.shape == (3, 12, 12, 3) and big.dtype == torch.uint8
    block = big[:, :3, :3].reshape(3, 9, 3)
    assert (block == block[:, :1]).all()  # one source pixel -> one 3x3 block
    assert torch.equal(big, overlay(images, torch.rand(3, 2, 2), alpha=0.0, size=12))
