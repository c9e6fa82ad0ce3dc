"""The grid localisation test (camlens.metrics.grid, camlens.compare.grid): known answers on a
colour model whose Grad-CAM is exactly the tile of its class."""

import json

import pytest
import torch
from torch import nn

from camlens.cam import create
from camlens.compare import CompareConfig
from camlens.compare.grid import grid_test
from camlens.data import Split
from camlens.metrics.grid import (
    GRID_TOO_FEW,
    GridConfig,
    Grids,
    grid_baseline_maps,
    grid_maps,
    grid_scores,
    make_grids,
    tile_masks,
    tile_scores,
)

# class c's image is one flat colour; the model's feature c fires only on that colour
COLOURS = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1]])


class Colours(nn.Module):
    """1x1 conv -> ReLU -> global average pool -> x10: feature c is 1 on class c's colour and 0
    on every other, so Grad-CAM of class c (= CAM here) is the tile of class c, exactly."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 1)
        with torch.no_grad():
            self.conv.weight.copy_((2 * COLOURS - 1)[:, :, None, None])
            self.conv.bias.copy_(1 - COLOURS.sum(1))
        self.relu = nn.ReLU()

    def forward(self, images):
        return 10 * self.relu(self.conv(images)).mean((2, 3))  # (N, 5, h, w) -> (N, 5)


class Flat(Colours):
    """The same, but it takes only 8x8 inputs (a fixed-size flatten): grids get resized."""

    def forward(self, images):
        feats = self.relu(self.conv(images)).flatten(1)  # (N, 5 * 8 * 8): 8x8 inputs only
        return 10 * feats.view(-1, 5, 64).mean(2)


class Leaky(Colours):
    """A grid with a red top-left tile also scores class 4, present nowhere: a leak."""

    def forward(self, images):
        logits = super().forward(images)
        if images.shape[-1] > 8:
            red = (images[:, 0, 0, 0] > 0.5) & (images[:, 1, 0, 0] < 0.5)
            logits = (
                logits
                + torch.zeros_like(logits).index_fill(1, torch.tensor([4]), 50.0) * red[:, None]
            )
        return logits


def colour_data(per_class=6, classes=5):
    labels = torch.arange(classes).repeat(per_class)  # (N,)
    images = COLOURS[labels][:, :, None, None].expand(-1, -1, 8, 8).clone()  # (N, 3, 8, 8)
    return images, labels


def grids_of(model, config=None, classes=5):
    images, labels = colour_data(classes=classes)
    config = config or GridConfig(count=6, min_grids=2)
    return make_grids(model, images, labels, model(images), config)


def fake_grids(count, n, size=(16, 16)):
    """Grids of the right shape for the baselines, which read no pixel."""
    t = n * n
    targets = torch.arange(t).repeat(count, 1)
    return Grids(torch.zeros(count, 3, *size), targets, targets, None, n, "pooled", count, 0, 0)


def test_tile_masks_partition_every_pixel_by_area():
    """Planted: each pixel given wholly to the tile of its top-left corner: the 3x3 split 2x2
    then had the middle row in the top tiles only (red)."""
    masks = tile_masks((3, 3), 2)
    assert torch.allclose(masks.sum(0), torch.ones(3, 3, dtype=torch.float64))
    assert masks[:, 1, 1].tolist() == [0.25] * 4  # the middle pixel, a quarter in each tile
    assert masks.sum((1, 2)).tolist() == [2.25] * 4  # equal tiles


@pytest.mark.parametrize(
    "n,size", [(2, (4, 4)), (2, (3, 3)), (2, (8, 8)), (3, (4, 4)), (3, (9, 9))]
)
def test_the_centre_blob_and_random_scores_exactly_chance(n, size):
    """The known answer: a class-blind map scores exactly 1/n^2 per grid (its tile shares sum
    to 1); for n = 2 the centre blob is symmetric, so 1/4 in every tile, pointing too (tied
    maxima share the hit). Planted: the arg-max's first index wins ties: the centre blob
    pointed at tile 0 every time, 1 there and 0 elsewhere (red)."""
    grids = fake_grids(5, n)
    values = grid_scores(*grid_baseline_maps("centre", grids, size), n)
    for metric in ("share", "share_input", "pointing"):
        assert values[metric].tolist() == [1 / n**2] * 5, metric
    if n == 2:
        per_tile = tile_scores(grid_baseline_maps("centre", grids, size)[0], n)
        assert torch.allclose(per_tile["share"], torch.full((5, 4), 0.25, dtype=torch.float64))
        assert torch.allclose(per_tile["pointing"], torch.full((5, 4), 0.25, dtype=torch.float64))
    random = grid_scores(*grid_baseline_maps("random", fake_grids(400, n), size), n)["share"]
    assert abs(float(random.mean()) - 1 / n**2) < 0.02


def test_a_class_blind_map_averages_exactly_chance_over_a_grids_tiles():
    """Any map that is the same for every target, however lopsided. Planted: tile 0's mask
    used for every target: the lopsided map then scored its tile-0 mass, 0.7 (red)."""
    g = torch.Generator().manual_seed(0)
    one = torch.rand(3, 1, 6, 6, generator=g) ** 4  # lopsided, one per grid
    values = grid_scores(one.expand(3, 4, 6, 6), one.expand(3, 4, 6, 6), 2)
    assert torch.allclose(values["share"], torch.full((3,), 0.25, dtype=torch.float64))
    assert torch.allclose(values["pointing"], torch.full((3,), 0.25, dtype=torch.float64))


def test_oracle_scores_one_and_a_map_with_no_mass_scores_chance():
    """Planted: a map with no positive mass left out (NaN): the silent map then had no
    score at all rather than chance (red)."""
    grids = fake_grids(2, 2)
    oracle = grid_scores(*grid_baseline_maps("oracle", grids, (4, 4)), 2)
    assert all(v.tolist() == [1.0, 1.0] for v in oracle.values())
    silent = torch.zeros(2, 4, 4, 4) - 1  # negative everywhere: no positive mass
    values = grid_scores(silent, silent, 2)
    assert all(v.tolist() == [0.25, 0.25] for v in values.values())


def test_grids_hold_distinct_confident_classes_and_say_their_path():
    model = Colours()
    grids = grids_of(model)
    assert grids.path == "pooled" and grids.images.shape == (6, 3, 16, 16)
    assert grids.built == 6 and grids.dropped == 0 and grids.confident == 30
    for g in range(6):
        assert len(set(grids.targets[g].tolist())) == 4
        # tile t at (t // 2, t % 2) holds the image of its class
        for t in range(4):
            r, c = divmod(t, 2)
            tile = grids.images[g, :, 8 * r : 8 * r + 8, 8 * c : 8 * c + 8]
            assert torch.equal(tile, COLOURS[grids.targets[g, t]][:, None, None].expand(3, 8, 8))
    assert len(set(grids.indices.flatten().tolist())) == 24  # each image once
    flat = grids_of(Flat())
    assert flat.path == "resized" and flat.images.shape == (6, 3, 8, 8)


def test_leakage_control_drops_grids_whose_top_logits_are_not_their_classes():
    """Planted: the kept mask ignored (every grid kept): the leaky grids stayed (red)."""
    model = Leaky()
    grids = grids_of(model, GridConfig(count=6, min_grids=1), classes=4)  # class 4 never present
    assert grids.dropped > 0 and grids.built - grids.dropped == grids.targets.shape[0]
    red_top_left = (grids.images[:, 0, 0, 0] > 0.5) & (grids.images[:, 1, 0, 0] < 0.5)
    assert not red_top_left.any()


@pytest.mark.parametrize(
    "classes,config,words",
    [
        (3, GridConfig(), "3 classes have confident (softmax > 0.9), correct test images"),
        (5, GridConfig(min_grids=8), "7 grids of 4 distinct classes from 30"),
    ],
)
def test_too_few_images_is_said_and_not_raised_by_the_compare_step(classes, config, words):
    """Planted: the GridError raised out of grid_test: compare stopped (red)."""
    model = Colours()
    images, labels = colour_data(classes=classes)
    result = grid_test(
        model, Split(images, labels), model(images), [("gradcam", "relu")], None, config
    )
    assert result["line"].startswith(f"grid test: {GRID_TOO_FEW}: ") and words in result["line"]
    assert "rows" not in result


def _maps_of(model, wrong=False):
    def maps_of(method, layer, grids):
        with create("gradcam", model, "relu") as cam:
            native, inputs = grid_maps(cam, grids)
        if method == "wrong tile":  # each map moved one tile across: it points at a neighbour
            native, inputs = (m.roll(m.shape[-1] // 2, -1) for m in (native, inputs))
        if method == "centre blob":  # the centre blob whatever the class
            native, inputs = grid_baseline_maps("centre", grids, native.shape[-2:])
        return native, inputs

    return maps_of


def test_gradcam_beats_the_centre_and_the_wrong_tile_and_centre_blob_lose():
    """Grad-CAM of this model is its class's tile: share 1, better than centre and random;
    the same map one tile off scores 0 and is worse; the centre blob for every class scores
    exactly 1/4 and never wins. Planted: the target set of tile 0 used for every tile (maps
    of one class for all): Grad-CAM fell to 1/4 and tied the centre (red)."""
    model = Colours()
    images, labels = colour_data(per_class=12)
    pairs = [("gradcam", "relu"), ("wrong tile", "relu"), ("centre blob", "relu")]
    config = GridConfig(count=12, min_grids=4)
    result = grid_test(model, Split(images, labels), model(images), pairs, _maps_of(model), config)
    mean = {(r["method"], r["metric"]): r["mean"] for r in result["rows"]}
    assert mean[("gradcam", "share")] == pytest.approx(1.0)
    assert mean[("gradcam", "pointing")] == pytest.approx(1.0)
    assert mean[("wrong tile", "share")] == pytest.approx(0.0, abs=1e-9)
    assert mean[("centre blob", "share")] == 0.25 and mean[("centre", "share")] == 0.25
    assert mean[("oracle", "share")] == 1.0
    decision = {(r["method"], r["metric"], r["vs"]): r["decision"] for r in result["paired"]}
    for vs in ("centre", "random"):
        assert decision[("gradcam", "share", vs)] == "better"
        assert decision[("wrong tile", "share", vs)] == "worse"
    assert decision[("centre blob", "share", "centre")] == "indistinguishable"
    assert decision[("centre blob", "share", "random")] != "better"
    line = result["line"]
    assert "believe gradcam relu: 1.000" in line and "worse than chance: wrong tile relu" in line
    assert "12 of 12 grids kept" in line and "pooled 16x16 input" in line


def colour_dataset(per_class=16, classes=5):
    """The colour images as a camlens test split, four of them mislabelled (compare needs
    mistakes)."""
    from camlens.data import Dataset, Split

    images, labels = colour_data(per_class, classes)
    moved = labels.clone()
    moved[:4] = (labels[:4] + 1) % classes
    pixels = (images * 255).round().to(torch.uint8)
    split = Split(pixels, moved)
    return Dataset(Split(pixels[:0], moved[:0]), split, tuple("abcde"), "colours", "")


@pytest.mark.parametrize("classes", [5, 3])
def test_compare_leads_with_the_grid_line_and_carries_it(classes, tmp_path, one_thread):
    """Through compare: Grad-CAM is believed, Eigen-CAM ties chance, the line leads the summary
    and compare.json; with 3 classes it says too few images and the rest still runs.
    Planted: the summary built without the grid line (red)."""
    from camlens.compare import compare
    from camlens.explain import ExplainPlan

    plan = ExplainPlan(methods=("gradcam", "eigencam"), layers=("relu",), compare_limit=4)
    config = GridConfig(count=16)
    result = compare(
        Colours(),
        colour_dataset(classes=classes),
        tmp_path,
        plan,
        CompareConfig(sanity_images=2, grid=config),
    )
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert saved["summary"][0] == result.summary[0] == saved["grid"]["line"]
    if classes == 3:
        assert result.summary[0] == (
            f"grid test: {GRID_TOO_FEW}: 3 classes have confident (softmax > 0.9), correct test "
            "images; a 2x2 grid needs 4 distinct classes"
        )
        assert result.rows and (tmp_path / "compare.csv").is_file()
        return
    line = result.summary[0]
    assert "believe gradcam relu: 1.000" in line and "16 of 16 grids kept" in line
    assert "not told apart from chance: eigencam relu" in line
    assert (
        saved["grid"]["settings"]["path"] == "pooled" and saved["grid"]["settings"]["dropped"] == 0
    )


def test_fewer_grids_than_a_paired_test_needs_get_no_verdict():
    """--grid-min-grids below compare's PAIRED_MIN_IMAGES: the cells say "too few images", as
    compare's do, however clear the difference. Planted: the rule left out (red)."""
    from camlens.metrics import PAIRED_MIN_IMAGES, TOO_FEW

    model = Colours()
    images, labels = colour_data(per_class=12)
    pairs = [("gradcam", "relu")]
    config = GridConfig(count=PAIRED_MIN_IMAGES - 1, min_grids=4)
    result = grid_test(model, Split(images, labels), model(images), pairs, _maps_of(model), config)
    assert {r["decision"] for r in result["paired"]} == {TOO_FEW}
    assert all(r["diff_low"] is r["p_holm"] is None for r in result["paired"])


class Fixed(Colours):
    """Takes only 8x8 inputs and asserts it, as torchvision's ViT and timm's PatchEmbed do."""

    def forward(self, images):
        assert images.shape[-1] == 8, f"Input width ({images.shape[-1]}) doesn't match model (8)"
        return super().forward(images)


def test_a_fixed_size_model_that_asserts_its_size_gets_the_grid_resized():
    """Planted: AssertionError left out of _takes' catch: it escaped make_grids (red)."""
    grids = grids_of(Fixed())
    assert grids.path == "resized" and grids.images.shape == (6, 3, 8, 8)


class Broken(Colours):
    """Fails on every input but its own 8x8 images two at a time: no grid can be scored."""

    def forward(self, images):
        if images.shape[0] != 30:
            raise IndexError("nothing but the test batch")
        return super().forward(images)


def test_a_model_that_takes_no_grid_is_skipped_in_one_line_and_a_failing_method_too():
    """Planted: only GridError caught in grid_test (red: IndexError out of compare's step);
    a method that raises on the grids stopping the others (red)."""
    model = Broken()
    images, labels = colour_data()
    config = GridConfig(count=6, min_grids=2)
    split = Split(images, labels)
    result = grid_test(model, split, model(images), [("gradcam", "relu")], None, config)
    line = result["line"]
    assert line.startswith("grid test: skipped: the model fails on the grid (IndexError: ")
    assert "\n" not in line and "rows" not in result

    model = Colours()

    def maps_of(method, layer, grids):
        if method == "refuses":
            raise ValueError("no token layer here\nsecond line")
        return _maps_of(model)(method, layer, grids)

    pairs = [("gradcam", "relu"), ("refuses", "relu")]
    result = grid_test(model, Split(images, labels), model(images), pairs, maps_of, config)
    assert {r["method"] for r in result["rows"]} >= {"gradcam"}
    assert "refuses" not in {r["method"] for r in result["rows"]}
    assert result["line"].endswith("; skipped: refuses relu (ValueError: no token layer here)")
