"""One road from the plan to every output: each test reproduces a bug that two roads caused
(issue 32), and was red before the fix."""

import importlib
import json
from dataclasses import fields

import pytest
import torch

import camlens
from camlens.cam import ScoreCAM, ScoreKnobs, SmoothKnobs
from camlens.cam.layers import upsample
from camlens.cam.normalize import normalize_maps
from camlens.data import Dataset, Split, load_dataset
from camlens.explain import ExplainError, ExplainPlan
from camlens.model import ResNet18, save_checkpoint
from camlens.train import TrainConfig

CLASSES = tuple("abcdefghij")


@pytest.fixture(scope="module")
def untrained():
    """An untrained narrow ResNet18 (most images are mistakes) and 24 random test images."""
    torch.manual_seed(0)
    model = ResNet18(10, width=8).eval()
    images = torch.randint(0, 256, (24, 3, 32, 32), dtype=torch.uint8)
    test = Split(images, torch.arange(24) % 10)
    data = Dataset(Split(images[:0], test.labels[:0]), test, CLASSES, "-", "-")
    return model, data


def test_a_plan_carries_each_methods_knobs(untrained, tmp_path):
    """Score-CAM's top_k in a plan with Grad-CAM beside it: each method gets its own knobs
    (before: `gradcam does not read top_k=8`, a TypeError and a traceback on the CLI)."""
    model, data = untrained
    plan = ExplainPlan(
        methods=("gradcam", "scorecam"), layers=("layer4",), limit=3, knobs=[ScoreKnobs(top_k=8)]
    )
    outcome = camlens.explain_model(model, data, tmp_path, plan)
    expl = outcome.galleries.explanations["scorecam"]
    chosen = outcome.galleries.mistakes
    with ScoreCAM(model, "layer4", top_k=8, normalize="none") as cam:
        ref = cam.explain(chosen.images.float() / 255, chosen.preds)
    # the gallery's maps are Score-CAM's with top_k 8 (all 64 channels give other maps)
    torch.testing.assert_close(expl.pred_low[0], ref.low_res[0], rtol=1e-4, atol=1e-6)


def test_gallery_and_counterfactual_settings_travel_through_explain_model(untrained, tmp_path):
    """A GalleryConfig and a CounterfactualConfig reach the job's gallery and counterfactual
    test through explain_model's ReportConfig (before: neither could; the defaults were used)."""
    from camlens.gallery import GalleryConfig
    from camlens.metrics.counterfactual import CounterfactualConfig
    from camlens.report import ReportConfig

    model, data = untrained
    plan = ExplainPlan(layers=("layer4",), limit=3, counterfactual=True)
    config = ReportConfig(
        gallery=GalleryConfig(size=40, per_page=2),
        counterfactual_config=CounterfactualConfig(fractions=(0.3,), headline=0.3),
    )
    outcome = camlens.explain_model(model, data, tmp_path, plan, report_config=config)
    cf = outcome.galleries.explanations["gradcam"].counterfactual
    assert (cf.fractions, cf.headline, cf.margin_map.shape) == ((0.3,), 0.3, (3, 1))
    assert cf.region == "contrast"  # the job's own, whatever the config says
    pages = sorted((tmp_path / "gallery" / "gradcam" / "pages").glob("page-*.png"))
    assert len(pages) == 2  # 3 cards, 2 a page (the default: 10)


def test_a_knob_no_method_of_the_plan_reads_is_refused_at_plan_time():
    """At plan time, before any model: a method's knobs without the method, or twice."""
    with pytest.raises(ExplainError, match="ScoreKnobs is scorecam's knobs, and scorecam is") as e:
        ExplainPlan(methods=("gradcam",), knobs=[ScoreKnobs(top_k=8)])
    assert "\n" not in str(e.value)
    with pytest.raises(ExplainError, match="smoothgradcam\\+\\+'s knobs are given twice"):
        ExplainPlan(methods=("smoothgradcam++",), knobs=[SmoothKnobs(), SmoothKnobs(samples=2)])
    # a method's own knobs, with the method: accepted, and its engine gets them
    plan = ExplainPlan(methods=("gradcam", "smoothgradcam++"), knobs=[SmoothKnobs(samples=2)])
    assert plan.engine_config("smoothgradcam++", "none").knobs == SmoothKnobs(samples=2)
    assert plan.engine_config("gradcam", "none").knobs is None


def test_compare_in_a_report_scores_the_maps_the_report_shows(untrained, tmp_path, monkeypatch):
    """Under report --compare the trust verdict is about the gallery's maps: its mistakes, its
    Score-CAM (all channels, not compare's own top_k 32), taken from the explain stream."""
    compare_run = importlib.import_module("camlens.compare.scoring")

    model, data = untrained
    scored = []
    real = compare_run.score_maps

    def recording(model, images, maps, targets, **kw):
        if hasattr(kw["engine"], "explain"):  # a method's engine, not a baseline's
            scored.append((images, maps))
        return real(model, images, maps, targets, **kw)

    monkeypatch.setattr(compare_run, "score_maps", recording)
    plan = ExplainPlan(methods=("scorecam",), layers=("layer4",), sort="margin", compare_limit=4)
    outcome = camlens.explain_model(model, data, tmp_path, plan)
    chosen = outcome.galleries.mistakes.select(torch.arange(4))  # the gallery's first four
    expl = outcome.galleries.explanations["scorecam"].select(torch.arange(4))
    shown = normalize_maps([upsample(expl.pred_low[0], (32, 32))], "minmax", False)[0]
    x = chosen.images.float() / 255
    mistakes = [
        maps for images, maps in scored if images.shape == x.shape and torch.equal(images, x)
    ]
    assert len(mistakes) == 1, "the gallery's first mistakes are compare's mistakes"
    torch.testing.assert_close(mistakes[0], shown, rtol=1e-4, atol=1e-5)


def test_run_resolves_the_auto_layer_as_every_command_does(tmp_path, tiny_folder):
    """`run` with layers None ("auto") trains, then explains the last layer before the pooling
    (before: 'no layer to explain', from a check on the unresolved plan)."""
    data = load_dataset(tiny_folder, progress=False)
    config = TrainConfig(epochs=1, width=8, batch_size=8)
    outcome = camlens.run(config, data, tmp_path, ExplainPlan(limit=2))
    assert next(iter(outcome.galleries.explanations.values())).layers == ("layer4",)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_folder):
    """An untrained width-8 model with confident logits, saved as a camlens checkpoint."""
    torch.manual_seed(0)
    data = load_dataset(tiny_folder, progress=False)
    model = ResNet18(len(data.classes), "batch", 8).eval()
    with torch.no_grad():
        model.linear.weight.mul_(30)
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_checkpoint(model, path, {"classes": list(data.classes), "image_size": 32, "epoch": 0})
    return path


@pytest.mark.parametrize("command", ["compare", "explain"])
def test_combined_layers_work_on_every_command_that_takes_layer(
    command, checkpoint, tiny_folder, tmp_path, capsys
):
    """The documented `--layer layer4,layer3+layer4` (one engine on both) on the CLI road:
    compare scores each entry; a gallery shows each hooked layer once."""
    from camlens.cli import main

    out = tmp_path / command
    argv = [command, "--checkpoint", checkpoint, "--data", tiny_folder, "--out", out]
    argv += ["--method", "gradcam", "--layer", "layer4,layer3+layer4", "--no-progress"]
    argv += ["--limit", 2] + (["--no-grid"] if command == "compare" else [])
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    if command == "compare":
        layers = json.loads((out / "compare.json").read_text())["settings"]["layers"]
        assert layers == ["layer4", "layer3+layer4"]
    else:
        assert "layer4 4x4, layer3 8x8 maps" in capsys.readouterr().out


def test_diff_and_over_epochs_refuse_a_second_method_rather_than_drop_it(untrained, tmp_path):
    """Both compare one method's maps: a plan naming two is an error in one line, not a
    silent cut to the first (the CLI refused it; the API and the report did not)."""
    from camlens.diff import diff_models
    from camlens.epochs import explain_over_epochs

    model, data = untrained
    plan = ExplainPlan(methods=("gradcam", "hirescam"), layers=("layer4",))
    with pytest.raises(ExplainError, match="one method's maps: name one, got gradcam,hirescam"):
        diff_models(model, model, data, plan=plan)
    with pytest.raises(ExplainError, match="one method's maps: name one, got gradcam,hirescam"):
        explain_over_epochs(tmp_path, data, tmp_path, plan)


def test_diff_computes_each_map_once(untrained, monkeypatch):
    """The shared mistakes' maps feed both the agreement statistics and the page's cards."""
    diff_compute = importlib.import_module("camlens.diff.compute")

    model, data = untrained
    other = ResNet18(10, width=8).eval()
    seen = []
    real = diff_compute.compute_maps

    def counting(model, images, target_sets, *args, **kw):
        seen.extend(images.flatten(1).sum(1).tolist())  # one entry per image explained
        return real(model, images, target_sets, *args, **kw)

    monkeypatch.setattr(diff_compute, "compute_maps", counting)
    result = diff_compute.diff_models(model, other, data, plan=ExplainPlan(layers=("layer4",)))
    explained = sum(len(g) for g in result.groups.values() if len(g))
    shared = len(result.groups["shared"])
    assert shared > 0
    # each model explains each image once: shared ones for both models, own ones for both
    assert len(seen) == 2 * explained


def test_compare_keeps_what_it_measured_when_a_late_step_fails(untrained, tmp_path, monkeypatch):
    """A failure inside the sanity or grid step (a ViT's AssertionError on a grid, say) is
    said in one line, and the table measured before it is on disk (before: nothing written)."""
    compare_run = importlib.import_module("camlens.compare.run")

    def boom(*args, **kwargs):
        raise AssertionError("Input image size (64*64) doesn't match model (32*32).")

    monkeypatch.setattr(compare_run, "run_sanity", boom)
    monkeypatch.setattr(compare_run, "grid_test", boom)
    model, data = untrained
    plan = ExplainPlan(methods=("gradcam",), layers=("layer4",), compare_limit=2)
    result = camlens.compare(model, data, tmp_path, plan)
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert saved["rows"] == result.rows and len(result.rows) > 0
    why = "AssertionError: Input image size (64*64) doesn't match model (32*32)."
    assert saved["errors"] == {"sanity": why, "grid test": why}
    assert f"grid test failed: {why}" in result.summary
    assert (tmp_path / "compare.csv").exists() and not (tmp_path / "sanity.png").exists()


def test_fp16_maps_are_refused_at_plan_time_in_one_line(untrained):
    """A user error, so the CLI prints one line (before: the engine's ValueError, a traceback)."""
    model, _ = untrained
    with pytest.raises(ExplainError, match="fp16 maps are refused") as e:
        ExplainPlan(layers=("layer4",), cam_precision="fp16").check(model)
    assert "\n" not in str(e.value)


def test_a_gallery_explains_the_1000_most_confident_mistakes_unless_told():
    """The default cap that keeps a page openable at ImageNet size, the same on every command
    that explains mistakes; --all explains every one (planted default None: red)."""
    from camlens.choices import DEFAULT_LIMIT
    from camlens.cli import build_parser

    assert ExplainPlan().limit == DEFAULT_LIMIT == 1000
    for command in ("report", "explain", "run"):
        base = [command, "--data", "d", "--out", "o"] + (
            ["--model", "m"] if command != "run" else []
        )
        assert build_parser().parse_args(base).limit == 1000, command
        assert build_parser().parse_args([*base, "--all"]).limit is None, command
        assert build_parser().parse_args([*base, "--limit", "5"]).limit == 5, command


def test_plan_and_training_share_no_name_with_two_meanings():
    """`camlens run` takes both: a plan field named like a training field would be one flag
    for two settings (the maps' precision was the training's --precision, maps fixed fp32)."""
    from camlens.cli.commands import plan_from_args
    from camlens.cli.parser import build_parser
    from camlens.train import TrainConfig

    shared = {f.name for f in fields(ExplainPlan)} & {f.name for f in fields(TrainConfig)}
    assert shared == {"eval_batch_size"}  # the inference batch, the same setting in both
    args = build_parser().parse_args(
        ["run", "--data", "d", "--out", "o", "--precision", "bf16", "--cam-precision", "bf16"]
    )
    assert args.precision == "bf16" and plan_from_args(args).cam_precision == "bf16"
    args = build_parser().parse_args(["run", "--data", "d", "--out", "o", "--precision", "bf16"])
    assert plan_from_args(args).cam_precision == "fp32"  # the training's alone
    explain = ["explain", "--checkpoint", "c", "--data", "d", "--out", "o"]
    for flag in ("--precision", "--cam-precision"):  # no training here: both name the maps'
        args = build_parser().parse_args([*explain, flag, "bf16"])
        assert plan_from_args(args).cam_precision == "bf16"
