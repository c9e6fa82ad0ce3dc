"""The known-evidence set: synthetic images whose evidence is known by construction, a tiny model
trained in seconds, and every trust verdict checked against it (and against hand-made results
where only one rule fails, so loosening any rule turns a test red)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from camlens.cam import create
from camlens.metrics import (
    HIGHER_IS_BETTER,
    SanityResult,
    baseline_maps,
    confusion_summary,
    counterfactual,
    paired_bootstrap,
    paired_decision,
    sanity_check,
    sanity_verdict,
    score_maps,
    similarity,
    spearman,
)
from conftest import edge_engine

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE, PATCH, CLASSES = 16, 4, 3


class Tiny(nn.Module):
    """Three convolutions, global average pooling, a linear head: "conv3" is a 4x4 grid."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, stride=2)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1, stride=2)
        self.linear = nn.Linear(32, CLASSES)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(images))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        return self.linear(x.mean((2, 3)))


def evidence_images(n: int, g: torch.Generator):
    """Grey noise with one PATCH x PATCH black-and-white square anywhere; its texture is the
    class (horizontal stripes, vertical stripes, a checkerboard). The square is the whole
    evidence: the oracle map is 1 on it and 0 elsewhere. A texture, not a colour, so a blur
    (insertion's start) removes it as deletion does."""
    images = 0.3 + 0.4 * torch.rand(n, 3, SIZE, SIZE, generator=g)
    labels = torch.randint(CLASSES, (n,), generator=g)
    ys, xs = torch.randint(SIZE - PATCH + 1, (2, n), generator=g)
    rows, cols = torch.arange(SIZE)[None, :, None], torch.arange(SIZE)[None, None, :]
    dy, dx = rows - ys[:, None, None], cols - xs[:, None, None]  # (N, SIZE, SIZE) offsets
    inside = (dy >= 0) & (dy < PATCH) & (dx >= 0) & (dx < PATCH)
    dy, dx = torch.broadcast_tensors(dy, dx)
    textures = torch.stack([dy % 2, dx % 2, (dy + dx) % 2], 1).float()  # (N, 3, SIZE, SIZE)
    texture = textures[torch.arange(n), labels]  # (N, SIZE, SIZE)
    images = torch.where(inside[:, None], texture[:, None].expand(-1, 3, -1, -1), images)
    return images, labels, inside.float()


@pytest.fixture(scope="module")
def known():
    return train_known()


def train_known():
    """The trained model (about 2 s on one core) and 48 held-out images it classifies."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = Tiny()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(150):
        images, labels, _ = evidence_images(64, g)
        loss = F.cross_entropy(model(images), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    images, labels, oracle = evidence_images(48, g)
    with torch.no_grad():
        assert (model(images).argmax(1) == labels).float().mean() > 0.9, "the model must learn"
    return model, images, labels, oracle


def cam_maps(model, method, images, targets):
    with create(method, model, "conv3") as engine:
        return engine(images, targets).detach()


def maps_of(known):
    """The oracle, three methods and both baselines on the held-out images."""
    model, images, labels, oracle = known
    g = torch.Generator().manual_seed(1)
    return {
        "oracle": oracle,
        "gradcam": cam_maps(model, "gradcam", images, labels),
        "hirescam": cam_maps(model, "hirescam", images, labels),
        "layercam": cam_maps(model, "layercam", images, labels),
        "random": baseline_maps(images.shape, "random", g, resolution=(4, 4)),
        "centre": baseline_maps(images.shape, "centre"),
    }


@pytest.fixture(scope="module")
def scored(known):
    model, images, labels, _ = known
    by_name = maps_of(known)
    metrics = ("deletion", "insertion", "road", "drop")
    return {
        name: score_maps(model, images, maps, labels, metrics, road_fractions=(0.1, 0.3, 0.5))
        for name, maps in by_name.items()
    }


def decide(scored, a, b, metric):
    """Paired decision of map a against map b on one metric (a single comparison)."""
    diffs = (scored[a].values[metric] - scored[b].values[metric])[None]
    paired = paired_bootstrap(diffs, generator=torch.Generator().manual_seed(0))
    return paired_decision(
        float(paired.diff[0]), float(paired.p_holm[0]), HIGHER_IS_BETTER[metric], 0.05
    )


@pytest.mark.parametrize("metric", ["deletion", "insertion", "road"])
def test_the_oracle_ties_or_beats_the_methods_which_beat_both_baselines(scored, metric):
    for method in ("gradcam", "hirescam", "layercam"):
        assert decide(scored, "oracle", method, metric) != "worse", method
        for baseline in ("random", "centre"):
            assert decide(scored, method, baseline, metric) == "better", (method, baseline)


def localisation(maps: torch.Tensor, oracle: torch.Tensor) -> torch.Tensor:
    """(N,) share of the map's mass on the evidence: 1 for the oracle, ~6% for a flat map."""
    return (maps * oracle).flatten(1).sum(1) / maps.flatten(1).sum(1).clamp_min(1e-12)


def test_deletion_insertion_and_road_rank_maps_as_the_evidence_does(known, scored):
    """Domeniconi et al.'s question: across maps, does a metric's ranking follow how much of
    the map lies on the evidence? Average Drop rewards maps that cover more and is not asked
    to (camlens shows it last)."""
    _, _, _, oracle = known
    maps = maps_of(known)
    names = list(maps)
    truth = torch.tensor([float(localisation(maps[k], oracle).mean()) for k in names])
    for metric in ("deletion", "insertion", "road"):
        sign = 1 if HIGHER_IS_BETTER[metric] else -1
        got = torch.tensor([sign * float(scored[k].values[metric].mean()) for k in names])
        rho = rank_correlation(got, truth)
        assert rho > 0.6, (metric, rho)
    # Average Drop does not: the oracle, all on the evidence, drops more than Grad-CAM does
    assert float(scored["oracle"].values["drop"].mean()) > float(
        scored["gradcam"].values["drop"].mean()
    )


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman of two (K,) vectors without ties (signs kept, unlike the maps' |.| version)."""
    ra, rb = a.argsort().argsort().float(), b.argsort().argsort().float()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def test_removing_the_oracle_region_undoes_the_prediction_and_beats_random(known):
    """Each image explained as if the truth were the next class: removing its evidence (10% of
    the pixels covers the 6% square) must move the prediction off the class it has now, unless
    that class is what the model says of an image with no square at all."""
    model, images, labels, oracle = known
    with torch.no_grad():
        blank = int(model(0.3 + 0.4 * torch.rand(8, 3, SIZE, SIZE)).argmax(1).mode().values)
    preds = labels
    pretend = (labels + 1) % CLASSES
    result = counterfactual(model, images, oracle, preds, pretend)
    j = result.fractions.index(0.1)
    has_other = preds != blank
    assert result.left_map[has_other, j].float().mean() > 0.9
    assert result.beat_random[has_other, j].float().mean() > 0.8
    random_left = (result.preds_random[has_other, j] != preds[has_other]).float().mean()
    assert random_left < 0.5
    assert len(result.rows()) == 48 and "cf10_drop" in result.rows()[0]
    assert result.verdicts(["red", "green", "blue"])[0].startswith("removing 10% of the contrast")
    lines = confusion_summary(result, ["red", "green", "blue"])
    assert len(lines) == 3 and " -> " in lines[0] and "random regions turn" in lines[0]


FAKES = {
    "constant": (lambda m: lambda images, t: torch.zeros(images.shape[0], SIZE, SIZE)),
    "fresh random": (lambda m: lambda images, t: torch.rand(images.shape[0], SIZE, SIZE)),
    "input edges": edge_engine,
    "centre": (lambda m: lambda images, t: baseline_maps(images.shape, "centre")),
}


def verdict_of(known, make_engine):
    model, images, labels, _ = known
    g = torch.Generator().manual_seed(0)
    return sanity_verdict(sanity_check(model, images[:12], labels[:12], make_engine, generator=g))


def test_gradcam_passes_every_sanity_check(known):
    verdict = verdict_of(known, lambda m: create("gradcam", m, "conv3"))
    assert verdict.state == "passes" and verdict.reasons == (), verdict.reasons
    assert verdict.decorrelated_at == "linear" and verdict.random_logit < 0.5


@pytest.mark.parametrize(
    "fake,state",
    [
        ("constant", "uninformative"),
        ("fresh random", "uninformative"),
        ("input edges", "model-blind"),
        ("centre", "model-blind"),
    ],
)
def test_maps_that_explain_nothing_fail(known, fake, state):
    verdict = verdict_of(known, FAKES[fake])
    assert verdict.state == state and not verdict.passed, (verdict.state, verdict.reasons)


def test_eigencam_never_reads_the_class_and_is_flagged(known):
    verdict = verdict_of(known, lambda m: create("eigencam", m, "conv3"))
    assert "class-blind" in verdict.failed and verdict.random_logit > 0.99


# ---- each rule alone: a hand-made result where only that rule fails -------------------------


def hand_result(**changes) -> SanityResult:
    """Two steps, four images, a method that passes everything; `changes` break one rule."""
    n = 4
    fields = {
        "steps": ("linear", "conv1"),
        "spearman": torch.tensor([[0.1] * n, [0.0] * n]),
        "ssim": torch.zeros(2, n),
        "maps": torch.zeros(3, 1, 4, 4),
        "self_agreement": torch.ones(n),
        "random_logit": torch.zeros(n),
        "entropy": torch.tensor([[1.0] * n, [1.0] * n, [2.0] * n]),
        "flat": torch.zeros(3, n, dtype=torch.bool),
    }
    fields.update(changes)
    return SanityResult(**fields)


def test_a_hand_made_passing_result_passes():
    verdict = sanity_verdict(hand_result())
    assert verdict.state == "passes" and verdict.failed == ()


@pytest.mark.parametrize(
    "changes,state,words",
    [
        (
            {"flat": torch.tensor([[True] * 3 + [False], [False] * 4, [False] * 4])},
            "uninformative",
            "flat",
        ),
        ({"self_agreement": torch.full((4,), 0.3)}, "uninformative", "agree only"),
        ({"spearman": torch.tensor([[0.6] * 4, [0.6] * 4])}, "model-blind", "every cascade step"),
        ({"entropy": torch.ones(3, 4)}, "model-blind", "entropy"),
        ({"spearman": torch.tensor([[0.85] * 4, [0.0] * 4])}, "class-blind", "linear randomised"),
        ({"random_logit": torch.full((4,), 0.9)}, "class-blind", "another class"),
    ],
)
def test_each_rule_alone_fails_its_state(changes, state, words):
    verdict = sanity_verdict(hand_result(**changes))
    assert verdict.state == state and verdict.failed == (state,)
    assert len(verdict.reasons) == 1 and words in verdict.reasons[0]


def test_a_stochastic_methods_similarity_is_read_against_its_floor():
    """Floor 0.6: steps at 0.45 and 0.35 stay above half the floor, so nothing decorrelated
    (read against 1 they would have); 0.45 is below 0.8 x 0.6, so not class-blind."""
    result = hand_result(
        self_agreement=torch.full((4,), 0.6), spearman=torch.tensor([[0.45] * 4, [0.35] * 4])
    )
    verdict = sanity_verdict(result)
    assert verdict.state == "model-blind" and verdict.failed == ("model-blind",)
    assert verdict.decorrelated == (False, False)


def test_decorrelating_at_any_step_is_enough():
    """Grad-CAM of a random ResNet drifts back towards edges: decorrelated at the output layer,
    0.59 alike at the last step, it is not model-blind."""
    result = hand_result(spearman=torch.tensor([[0.1] * 4, [0.59] * 4]))
    verdict = sanity_verdict(result)
    assert verdict.state == "passes" and verdict.decorrelated == (True, False)


def test_two_flat_maps_are_unchanged_not_decorrelated():
    flat, peaked = torch.zeros(2, 4, 4), torch.rand(2, 4, 4)
    assert similarity(flat, flat).tolist() == [1.0, 1.0]
    assert spearman(flat, flat).tolist() == [0.0, 0.0]  # the raw convention it corrects
    assert similarity(peaked, peaked).allclose(torch.ones(2))
    assert similarity(flat, peaked).tolist() == [0.0, 0.0]  # information lost is a change
