"""`camlens compare`: the table, the figures and the refusals, on a width-8 model and tiny data."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from camlens.cam import METHODS, TOKEN_METHODS
from camlens.cli import main
from camlens.compare import (
    COLUMNS,
    CompareConfig,
    beats_baselines,
    compare,
    headline,
    indistinguishable_from,
    sanity_lines,
    select_subsets,
)
from camlens.compare.table import paired_rows
from camlens.data import Dataset, Split, load_dataset
from camlens.evaluate import as_float_images, predict
from camlens.explain import ExplainError, ExplainPlan
from camlens.metrics import (
    METRICS,
    PAIRED_MIN_IMAGES,
    TOO_FEW,
    VERDICTS,
    baseline_maps,
    holm,
    paired_bootstrap,
    score_maps,
)
from camlens.model import ResNet18, save_checkpoint
from test_trust import CLASSES, FAKES, train_known

LAYERS = ("layer3", "layer4")
FILES = ("compare.csv", "compare.json", "compare.png", "sanity.png")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_folder):
    """An untrained width-8 model (most tiny images wrong) and its checkpoint."""
    torch.manual_seed(0)
    data = load_dataset(tiny_folder, progress=False)
    model = ResNet18(len(data.classes), "batch", 8).eval()
    with torch.no_grad():  # untrained logits barely depend on the image; make them
        model.linear.weight.mul_(30)
    ckpt = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_checkpoint(model, ckpt, {"classes": list(data.classes), "image_size": 32, "epoch": 0})
    return model, data, ckpt


@pytest.fixture(scope="module")
def compared(tiny, tmp_path_factory, one_thread):
    model, data, _ = tiny
    out = tmp_path_factory.mktemp("cmp") / "out"
    plan = ExplainPlan(methods=tuple(METHODS), layers=LAYERS, compare_limit=3)
    result = compare(model, data, out, plan, CompareConfig(sanity_images=2))
    return result, out


def test_every_method_layer_subset_metric_and_both_baselines(compared):
    result, out = compared
    with open(out / "compare.csv") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == COLUMNS
        lines = list(reader)
    rows = [r for r in lines if r["vs"] == ""]
    cells = {(r["method"], r["layer"], r["subset"], r["metric"]) for r in rows}
    expected = {
        (m, layer, s, metric)
        for m in METHODS
        for layer in LAYERS
        for s in ("mistakes", "correct")
        for metric in METRICS
        if (m, layer) != ("cam", "layer3")  # CAM needs the layer feeding GAP -> fc
        and m not in TOKEN_METHODS  # attention rollout refuses a CNN's layers
    }
    tokens_only = [(m, layer) for m in METHODS if m in TOKEN_METHODS for layer in LAYERS]
    assert list(result.skipped) == [("cam", "layer3"), *tokens_only]
    assert all("name a token layer" in str(result.skipped[k]) for k in tokens_only)
    methods = {m for m, *_ in expected}
    expected |= {
        (b, layer, s, metric)
        for b, layer in [("random", "layer3"), ("random", "layer4"), ("centre", "-")]
        for s in ("mistakes", "correct")
        for metric in METRICS
    }
    assert cells == expected and len(rows) == len(expected)
    assert all(r["n"] == "3" for r in rows if r["metric"] != "arcc")
    for r in rows:
        if r["metric"] != "arcc":  # ARCC may be undefined (NaN) on an untrained model
            assert float(r["ci_low"]) <= float(r["mean"]) <= float(r["ci_high"])
    payload = json.loads((out / "compare.json").read_text())
    assert payload["columns"] == list(COLUMNS) and len(payload["rows"]) == len(expected)
    assert set(payload["sanity"]) == set(METHODS) - TOKEN_METHODS  # refused at every layer
    # every method cell against each baseline: the random map at its own layer and the centre
    paired = [r for r in lines if r["vs"] != ""]
    got = {(r["method"], r["layer"], r["subset"], r["metric"], r["vs"]) for r in paired}
    want = {(*cell, vs) for cell in expected if cell[0] in methods for vs in ("random", "centre")}
    assert got == want and len(paired) == len(want) == len(payload["paired"])
    # 3 images a subset: a bootstrap-t there swings with fp32 rounding, so no cell is tested
    assert {r["decision"] for r in paired} == {TOO_FEW}
    for r in payload["paired"]:
        assert r["diff_low"] is r["diff_high"] is r["p_holm"] is None and r["n"] == 3
    assert payload["headline"] == [
        f"too few images for the paired verdicts on 3 mistakes and 3 correct: they need "
        f"{PAIRED_MIN_IMAGES} or more a subset (--limit {PAIRED_MIN_IMAGES} or more), so no "
        "interval and no decision is given"
    ]
    assert {s["state"] for s in payload["sanity"].values()} <= set(payload["verdicts"])
    assert payload["sanity"]["eigencam"]["state"] != "passes"
    assert payload["settings"]["deletion"].startswith("RISE")
    assert "forwards" in payload["settings"]["estimate"]["summary"]
    assert payload["lead_metrics"] == ["deletion", "insertion", "road"]
    # the random baseline is drawn at each layer's own grid (32 px: layer3 8x8, layer4 4x4)
    assert payload["settings"]["baselines"]["random"].endswith("layer3 8x8, layer4 4x4")
    for name in FILES:
        assert (out / name).read_bytes()[:4] in (b"\x89PNG", b"meth", b'{\n "')


def test_the_docs_trust_table_is_printed_from_compare_json(compared):
    """tools/trust_table.py, which prints docs/trust.md's table: a row per scored (method,
    layer, subset) with its decisions against both baselines, then the baselines' means."""
    _, out = compared
    tool = Path(__file__).parents[1] / "tools" / "trust_table.py"
    printed = subprocess.run(
        [sys.executable, str(tool), str(out)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    payload = json.loads((out / "compare.json").read_text())
    cells = {(r["method"], r["layer"], r["subset"]) for r in payload["paired"]}
    rows = [line.split(" | ") for line in printed if line.count("; centre ") == 3]
    assert {(r[1], r[2], r[0].lstrip("| ")) for r in rows} == cells and len(rows) == len(cells)
    for r in rows:
        assert r[3] == payload["sanity"][r[1]]["state"]
    assert (
        sum(line.startswith(("| mistakes | centre", "| correct | centre")) for line in printed) == 2
    )


def test_a_subset_of_too_few_images_gets_no_interval_no_verdict_and_no_place_in_holm():
    """12 mistakes are tested, 3 correct images are not, however large their difference: the
    Holm family is the tested cells alone. Planted: a 3-image cell tested (its bound moved by
    orders of magnitude under 3e-7 of rounding) and the untested cells counted in Holm."""
    g = torch.Generator().manual_seed(0)
    n_of = {"mistakes": PAIRED_MIN_IMAGES + 2, "correct": 3}
    per_task = {}
    for subset, n in n_of.items():
        centre = torch.rand(len(METRICS), n, generator=g, dtype=torch.float64)
        per_task[(subset, "centre", "-")] = centre
        per_task[(subset, "m", "l")] = centre - 0.3 - 0.01 * torch.rand(centre.shape, generator=g)
    rows = [
        {"method": m, "layer": la, "subset": s, "metric": metric, "n": n_of[s]}
        for s, m, la in per_task
        for metric in METRICS
    ]
    subsets = {s: torch.arange(n) for s, n in n_of.items()}
    out = paired_rows(rows, per_task, subsets, [("m", "l")], [("centre", "-")], 0.05, 0)
    tested = [r for r in out if r["subset"] == "mistakes"]
    untested = [r for r in out if r["subset"] == "correct"]
    assert {r["decision"] for r in untested} == {TOO_FEW}
    assert all(r["diff_low"] is r["p_holm"] is None for r in untested)
    assert all(r["diff"] == pytest.approx(-0.305, abs=0.006) for r in untested)
    # the 12 mistakes alone: the same bootstrap, Holm over their cells only
    mine, centre = per_task[("mistakes", "m", "l")], per_task[("mistakes", "centre", "-")]
    g = torch.Generator().manual_seed(0)
    want = paired_bootstrap(mine - centre, generator=g, threshold=0.05 / len(METRICS))
    assert [r["p_holm"] for r in tested] == holm(want.p).tolist()
    assert [r["diff_low"] for r in tested] == want.low.tolist()
    assert {r["decision"] for r in tested if r["metric"] == "deletion"} == {"better"}
    said = headline(rows + out, 0.05)
    assert said[0].startswith("too few images for the paired verdicts on 3 correct: ")
    assert any(line.startswith("m l (mistakes) beats every baseline on deletion") for line in said)


def test_subsets_are_the_most_confident_mistakes_and_as_many_correct_images():
    logits = torch.tensor([[3.0, 0], [0, 1], [0, 5], [2, 0], [0, 0.5], [4, 0]])  # preds 0 1 1 0 1 0
    labels = torch.tensor([1, 1, 0, 0, 0, 0])
    subsets = select_subsets(logits, labels, limit=2)
    assert subsets["mistakes"].tolist() == [2, 0]  # wrong: 0 (p .95), 2 (p .99), 4 (p .62)
    assert sorted(subsets["correct"].tolist()) in ([1, 3], [1, 5], [3, 5])
    assert subsets["correct"].tolist() == select_subsets(logits, labels, 2)["correct"].tolist()


def test_baselines_are_scored_on_the_same_images_and_targets(tiny, compared):
    model, data, _ = tiny
    result, _ = compared
    logits = predict(model, data.test.images)
    idx = select_subsets(logits, data.test.labels, 3)["mistakes"]
    images = as_float_images(data.test.images[idx])
    targets = logits[idx].argmax(1)
    maps = baseline_maps(images.shape, "centre")
    metrics = ("deletion", "insertion", "drop")
    want = score_maps(model, images, maps, targets, metrics=metrics).values
    got = {
        r["metric"]: r["mean"]
        for r in result.rows
        if (r["method"], r["subset"]) == ("centre", "mistakes") and r["metric"] in metrics
    }
    assert got == pytest.approx({m: float(want[m].mean()) for m in metrics}, abs=1e-6)
    # the random baseline at layer3 is drawn on layer3's 8x8 grid, seeded as compare seeds it
    g = torch.Generator().manual_seed(0)
    maps = baseline_maps(images.shape, "random", g, resolution=(8, 8))
    want = score_maps(model, images, maps, targets, metrics=metrics).values
    got = {
        r["metric"]: r["mean"]
        for r in result.rows
        if (r["method"], r["layer"], r["subset"]) == ("random", "layer3", "mistakes")
        and r["metric"] in metrics
    }
    assert got == pytest.approx({m: float(want[m].mean()) for m in metrics}, abs=1e-6)


def _cli(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse refuses a bad flag value itself
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "flags, words",
    [
        (("--method", "gradcam,nope"), "unknown method 'nope'"),
        (("--layer", "layer9"), "layer9"),
        (("--limit", "0"), "--limit must be >= 1"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tiny, tmp_path, capsys, flags, words):
    _, data, ckpt = tiny
    out = tmp_path / "out"
    code, _, err = _cli(
        capsys,
        "compare",
        "--checkpoint",
        ckpt,
        "--data",
        data.source,
        "--out",
        out,
        "--method",
        "gradcam",
        "--device",
        "cpu",
        "--no-progress",
        *flags,
    )
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_compare_prints_the_grid_line_first_and_finishes_without_enough_images(
    tiny, tmp_path, capsys
):
    """The untrained model has too few confident correct images for a 2x2 grid: compare says
    so first and still writes its table. Planted: GridError left to stop compare (red)."""
    _, data, ckpt = tiny
    out = tmp_path / "out"
    flags = ("--method", "gradcam", "--layer", "layer4", "--limit", 2, "--device", "cpu")
    code, stdout, err = _cli(
        capsys, "compare", "--checkpoint", ckpt, "--data", data.source, "--out", out, *flags,
        "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    # after the layers it explains (printed as the model opens), the grid line comes first
    said = [line for line in stdout.splitlines() if not line.startswith("layer ")]
    first = said[0]
    assert first.startswith("grid test: too few images for the grid test: "), stdout
    saved = json.loads((out / "compare.json").read_text())
    assert saved["grid"]["line"] == first == saved["summary"][0]
    assert all((out / name).is_file() for name in FILES)
    assert stdout.count(first) == 1  # not repeated among the verdicts
    code, _, err = _cli(
        capsys, "compare", "--checkpoint", ckpt, "--data", data.source, "--out", out, *flags,
        "--no-progress", "--no-grid",
    )  # fmt: skip
    assert code == 0 and "grid" not in json.loads((out / "compare.json").read_text())["summary"][0]


def test_a_checkpoint_for_other_classes_is_refused(tmp_path, tiny_folder, capsys):
    ckpt = tmp_path / "other.safetensors"
    meta = {"classes": ["a", "b", "c", "d"], "image_size": 32, "epoch": 0}
    save_checkpoint(ResNet18(4, "batch", 8), ckpt, meta)
    out = tmp_path / "out"
    code, _, err = _cli(
        capsys,
        "compare",
        "--checkpoint",
        ckpt,
        "--data",
        tiny_folder,
        "--out",
        out,
        "--device",
        "cpu",
        "--no-progress",
    )
    assert code == 2 and "trained on" in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_run_compare_writes_the_table_and_the_report_section(tmp_path, tiny_folder, capsys):
    out = tmp_path / "r"
    code, stdout, err = _cli(
        capsys,
        "run",
        "--data",
        tiny_folder,
        "--out",
        out,
        "--epochs",
        1,
        "--width",
        8,
        "--batch-size",
        8,
        "--no-progress",
        "--layer",
        "layer4",
        "--method",
        "gradcam",
        "--compare",
        2,
    )
    assert code == 0, err
    for name in FILES:
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "compare.csv").read_text().splitlines()))
    assert {r["method"] for r in rows} == {"gradcam", "random", "centre"}
    assert "Can these maps be trusted?" in (out / "report.html").read_text()
    assert "compare:" in stdout
    # run --compare prints the verdicts compare.json carries, as `camlens compare` does
    summary = json.loads((out / "compare.json").read_text())["summary"]
    # the grid test leads; a 1-epoch width-8 model has too few confident images for it
    assert summary[0].startswith("grid test: too few images for the grid test: ")
    assert summary[1].startswith("gradcam layer4: ")
    assert "\n".join(f"  {line}" for line in summary) in stdout


def test_run_refuses_compare_0_before_training(tmp_path, tiny_folder, capsys):
    out = tmp_path / "r"
    code, _, err = _cli(
        capsys,
        "run",
        "--data",
        tiny_folder,
        "--out",
        out,
        "--epochs",
        1,
        "--width",
        8,
        "--no-progress",
        "--compare",
        0,
    )
    assert code == 2 and "--compare must be >= 1" in err, err
    assert not (out / "checkpoint.safetensors").exists()


# -- one engine on several layers (a layer "layer3+layer4") ----------------------------------------


def test_a_plus_b_layer_is_one_engine_on_both(tiny, tmp_path, one_thread):
    model, data, _ = tiny
    result = compare(
        model,
        data,
        tmp_path / "out",
        ExplainPlan(methods=("refinecam",), layers=("layer4", "layer3+layer4"), compare_limit=2),
        CompareConfig(sanity_images=1),
    )
    layers = {r["layer"] for r in result.rows if r["method"] == "refinecam"}
    assert layers == {"layer4", "layer3+layer4"} and not result.skipped
    assert result.sanity["refinecam"]["layer"] == "layer3+layer4"
    # the "+" entry scores RefineCAM's product, which differs from layer4 alone
    deletion = {
        r["layer"]: r["mean"]
        for r in result.rows
        if r["method"] == "refinecam" and r["metric"] == "deletion" and r["subset"] == "mistakes"
    }
    assert deletion["layer4"] != deletion["layer3+layer4"]


def test_a_win_needs_the_corrected_paired_test_against_every_baseline():
    """Hand-made rows: a cell whose own interval lies beyond both baselines' means but whose
    paired test ties the centre map is not a win; one better than both is."""
    plain = [
        {"method": "gradcam", "layer": "layer4", "subset": "mistakes", "metric": m}
        for m in ("deletion", "insertion")
    ]

    def paired(metric, vs, decision):
        return {**plain[0], "metric": metric, "vs": vs, "decision": decision}

    rows = plain + [
        paired("deletion", "random", "better"),
        paired("deletion", "centre", "indistinguishable"),
        paired("insertion", "random", "better"),
        paired("insertion", "centre", "better"),
    ]
    wins = beats_baselines(rows)
    assert wins == {
        ("gradcam", "layer4", "mistakes", "deletion"): False,
        ("gradcam", "layer4", "mistakes", "insertion"): True,
    }
    rows += [
        paired("road", "centre", "indistinguishable"),
        paired("insertion", "centre", "indistinguishable"),
    ]
    assert indistinguishable_from(rows, "centre") == []  # insertion was told apart once
    tied = [paired(m, "centre", "indistinguishable") for m in ("deletion", "insertion", "road")]
    assert indistinguishable_from(tied, "centre") == [
        "gradcam layer4 (mistakes) cannot be told apart from the centre map on "
        "deletion, insertion, road"
    ]


# ---- end to end on the known-evidence model: compare fails what it should --------------------


def known_data(known) -> Dataset:
    """The known-evidence images as a test split in which every other label is moved to the
    next class: the model (which reads the square) gets those "wrong", so compare has mistakes
    whose predicted class is the true evidence."""
    _, images, labels, _ = known
    moved = labels.clone()
    moved[::2] = (labels[::2] + 1) % CLASSES
    pixels = (images * 255).round().to(torch.uint8)
    empty = Split(pixels[:0], moved[:0])
    return Dataset(empty, Split(pixels, moved), ("rows", "columns", "checks"), "known", "")


@pytest.fixture(scope="module")
def known(one_thread):
    return train_known()


# the first failing state; Eigen-CAM fails model-blind first and class-blind as well
EXPECTED = {
    "gradcam": "passes",
    "eigencam": "model-blind",
    "constant": "uninformative",
    "fresh random": "uninformative",
    "input edges": "model-blind",
    "centre": "model-blind",
}


@pytest.fixture(scope="module")
def known_compared(known, tmp_path_factory, one_thread):
    model = known[0]
    # the fakes ignore the layers they are given: (model, layers) -> engine
    engines = {name: (lambda m, layers, f=make: f(m)) for name, make in FAKES.items()}
    engines["centre map"] = engines.pop("centre")  # "centre" names the baseline
    plan = ExplainPlan(
        methods=("gradcam", "eigencam", "constant", "fresh random", "input edges", "centre map"),
        layers=("conv3",),
        compare_limit=8,
    )
    out = tmp_path_factory.mktemp("known") / "out"
    return compare(
        model, known_data(known), out, plan, CompareConfig(sanity_images=12), engines=engines
    ), out


@pytest.mark.parametrize("method", list(EXPECTED))
def test_compare_passes_gradcam_and_fails_what_explains_nothing(known_compared, method):
    """Planted: the state read as the old `passed` flag of the last cascade step alone."""
    result, _ = known_compared
    name = "centre map" if method == "centre" else method
    state = result.sanity[name]["state"]
    assert state == EXPECTED[method], (method, result.sanity[name]["reasons"])
    if method == "eigencam":  # it never reads the class
        assert "class-blind" in result.sanity[name]["failed"]
    line = next(line for line in result.summary if line.startswith(f"{name} conv3: "))
    if state == "passes":
        assert line == "gradcam conv3: passes"
    else:
        assert line.startswith(f"{name} conv3: {state} — ") and len(line) > len(name) + 30


def test_callers_methods_are_scored_and_paired_as_any_other(known_compared):
    result, out = known_compared
    payload = json.loads((out / "compare.json").read_text())
    assert payload["summary"] == result.summary
    methods = {r["method"] for r in result.paired}
    assert methods == {
        "gradcam",
        "eigencam",
        "constant",
        "fresh random",
        "input edges",
        "centre map",
    }
    # the random baseline is drawn on conv3's 4x4 grid, learnt from Grad-CAM's probe
    assert payload["settings"]["baselines"]["random"].endswith("conv3 4x4")


def test_the_summary_names_each_state_and_its_first_reason():
    sanity = {
        "gradcam": {"layer": "layer4", "state": "passes", "reasons": [], "passed": True},
        "eigencam": {
            "layer": "layer4",
            "state": "class-blind",
            "reasons": ["still 1.00 alike with linear randomised (floor 1.00)", "another"],
            "passed": False,
        },
        "flat": {
            "layer": "layer4",
            "state": "uninformative",
            "reasons": ["90% of the maps are flat"],
            "passed": False,
        },
        "edges": {"layer": "layer3", "state": "model-blind", "reasons": [], "passed": False},
    }
    assert sanity_lines(sanity) == [
        "gradcam layer4: passes",
        "eigencam layer4: class-blind — still 1.00 alike with linear randomised (floor 1.00)",
        "flat layer4: uninformative — 90% of the maps are flat",
        f"edges layer3: model-blind — {VERDICTS['model-blind']}",
    ]
    plain = {"method": "gradcam", "layer": "layer4", "subset": "mistakes"}
    rows = [{**plain, "metric": m} for m in ("deletion", "insertion")] + [
        {**plain, "metric": m, "vs": vs, "decision": "better"}
        for m in ("deletion", "insertion")
        for vs in ("random", "centre")
    ]
    assert headline(rows, 0.05) == [
        "gradcam layer4 (mistakes) beats every baseline on deletion, insertion "
        "(paired, Holm-corrected at alpha 0.05)"
    ]
    rows[-1]["decision"] = "indistinguishable"  # insertion ties the centre map
    assert headline(rows, 0.05)[0].startswith(
        "gradcam layer4 (mistakes) beats every baseline on deletion ("
    )
    assert headline(rows[:2], 0.05) == [
        "no method beats every baseline on deletion, insertion, road "
        "(paired, Holm-corrected at alpha 0.05)"
    ]


def test_a_method_of_ones_own_cannot_take_a_baselines_name(tiny, tmp_path):
    model, data, _ = tiny
    plan = ExplainPlan(methods=("centre",), layers=("layer4",), compare_limit=2)
    engines = {"centre": lambda m, layers: lambda images, targets: images.mean(1)}
    with pytest.raises(ExplainError, match="names a baseline"):
        compare(model, data, tmp_path / "out", plan, engines=engines)
    assert not (tmp_path / "out").exists()
