"""The library pipeline is what the CLI runs: the same call writes the same files."""

import json
import os
import re
import subprocess
import sys
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import camlens
from camlens.classifier import Classifier
from camlens.cli import main
from camlens.compare import CompareConfig
from camlens.data import Dataset, Split, load_dataset
from camlens.data.sample import load_sample
from camlens.explain import ExplainError, ExplainPlan
from camlens.model import ResNet18
from camlens.pipeline import report, run, write_galleries
from camlens.train import TrainConfig
from conftest import CIFAR10, Compose, Normalize, ToTensor


def test_run_writes_what_the_cli_writes(tmp_path, tiny_folder, capsys):
    config = TrainConfig(epochs=1, width=8, batch_size=8)
    data = load_dataset(tiny_folder, progress=False)
    plan = ExplainPlan(layers=["layer4"], limit=5)
    outcome = run(config, data, tmp_path / "lib", plan)
    argv = ["run", "--data", tiny_folder, "--out", tmp_path / "cli", "--epochs", 1, "--width", 8]
    argv += ["--batch-size", 8, "--layer", "layer4", "--limit", 5, "--no-progress"]
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    lib, cli = tmp_path / "lib", tmp_path / "cli"
    for name in ("eval/misclassified.csv", "gallery/gradcam/index.csv"):
        assert (lib / name).read_bytes() == (cli / name).read_bytes(), name
    # the same weights (not bytes: safetensors writes its header's keys in no fixed order)
    weights = [load_file(d / "checkpoint.safetensors") for d in (lib, cli)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    metrics = [json.loads((d / "eval" / "metrics.json").read_text()) for d in (lib, cli)]
    assert {**metrics[0], "checkpoint": ""} == {**metrics[1], "checkpoint": ""}
    items = [re.findall(r'data-index="(\d+)"', (d / "report.html").read_text()) for d in (lib, cli)]
    assert items[0] == items[1] and 0 < len(items[0]) <= 5
    # the outcome says what was written
    assert outcome.report == lib / "report.html"
    assert outcome.galleries.folders == {"gradcam": lib / "gallery" / "gradcam"}
    assert len(outcome.galleries.mistakes) == len(items[0])
    assert outcome.evaluation.accuracy == metrics[0]["test_acc"]


def test_run_checks_the_layers_before_training(tmp_path, tiny_folder):
    data = load_dataset(tiny_folder, progress=False)
    with pytest.raises(ExplainError, match="layer3.1.conv2"):
        run(TrainConfig(epochs=1, width=8), data, tmp_path / "r", ExplainPlan(layers=["layer9"]))
    assert not (tmp_path / "r").exists()  # no hours of training before the error


PEAK = """
import resource, sys, torch
from camlens.data import Dataset, Split
from camlens.model import ResNet18
from camlens.explain import ExplainPlan
from camlens.pipeline import write_galleries

torch.manual_seed(0)
model = ResNet18(10, width=8).eval()  # untrained: nine images in ten are mistakes
for n in map(int, sys.argv[2:]):
    images = torch.randint(0, 256, (2 * n, 3, 32, 32), dtype=torch.uint8)
    test = Split(images, torch.arange(2 * n) % 10)
    data = Dataset(Split(images[:0], test.labels[:0]), test, tuple("abcdefghij"), "-", "-")
    plan = ExplainPlan(layers=["layer3", "layer4"], cam_batch_size=8, limit=n)
    write_galleries(model, data, f"{sys.argv[1]}/{n}", plan)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # peak so far, KB
"""


def test_explain_memory_does_not_grow_with_the_mistakes(tmp_path):
    """Peak memory of explaining N mistakes, then 4N in the same process: with chunks of 8 in
    memory rather than the whole gallery, the second run needs no more than the first."""
    env = {**os.environ, "PYTHONPATH": str(Path(camlens.__file__).parents[1])}
    argv = [sys.executable, "-c", PEAK, str(tmp_path), "24", "96"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list((tmp_path / "96" / "gallery" / "gradcam" / "cards").iterdir())) == 96
    small, large = map(int, done.stdout.split())
    # drawn all at once, each mistake costs ~1.7 MB (card, page, panels): 1.4x here
    assert large / small < 1.2, (small, large)


def test_a_job_checks_its_plan_once(tmp_path, monkeypatch):
    """The plan is checked against the model at the job's entry only: not again by the steps
    it hands the plan to (gallery, report), nor per chunk of the explain stream."""
    calls = []
    for module in [m for name, m in sys.modules.items() if name.startswith("camlens")]:
        real = getattr(module, "check_explainable", None)
        if real is not None:  # every module's name for it, so a direct import counts too

            def counted(*args, real=real):
                calls.append(args)
                return real(*args)

            monkeypatch.setattr(module, "check_explainable", counted)
    torch.manual_seed(0)
    model = ResNet18(10, width=8).eval()  # untrained: most images are mistakes
    images = torch.randint(0, 256, (24, 3, 32, 32), dtype=torch.uint8)
    test = Split(images, torch.arange(24) % 10)
    data = Dataset(Split(images[:0], test.labels[:0]), test, tuple("abcdefghij"), "-", "-")
    plan = ExplainPlan(layers=["layer4"], limit=6, cam_batch_size=2)  # three chunks
    report(model, data, tmp_path / "report", plan, run_info={})
    assert len(calls) == 1
    # with a compare inside: its plan is the job's, checked already
    compared = replace(plan, compare_limit=2, counterfactual=False)
    report(model, data, tmp_path / "compared", compared, run_info={})
    assert len(calls) == 2
    write_galleries(model, data, tmp_path / "galleries", plan)
    assert len(calls) == 3


# the user's side of the next test: a plain PyTorch script's dataset, transform and model
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


class TinyCIFAR(torch.utils.data.Dataset):
    """torchvision.datasets.CIFAR10's shape: .data (N, H, W, 3) uint8, .targets, .classes."""

    classes = ["cat", "dog", "ship"]

    def __init__(self, transform=None):
        rng = np.random.default_rng(0)
        self.data = rng.integers(0, 256, (24, 8, 8, 3), dtype=np.uint8)
        self.targets = rng.integers(0, 3, 24).tolist()
        self.transform = transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.transform(self.data[i]), self.targets[i]


def user_net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            features=nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3)),
            relu=nn.ReLU(),
            pool=nn.AdaptiveAvgPool2d(1),
            flat=nn.Flatten(),
            fc=nn.Linear(8, 3),
        )
    ).eval()


def test_a_plain_pytorch_model_and_dataloader_need_no_conversion(tmp_path):
    """The user's model (trained on normalised images) and DataLoader go straight into
    explain_model, compare and diff_models, with the user's own layer names; the maps are
    those of the same pixels given as a camlens Dataset to the model wrapped by hand."""
    transform = Compose([ToTensor(), Normalize(MEAN, STD)])
    loader = torch.utils.data.DataLoader(TinyCIFAR(transform), batch_size=5)
    model = user_net(0)
    raw = TinyCIFAR()
    images = torch.from_numpy(raw.data).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W)
    test = Split(images, torch.tensor(raw.targets))
    data = Dataset(Split(test.images[:0], test.labels[:0]), test, tuple(raw.classes), "-", "-")
    wrapped = Classifier(model, MEAN, STD)
    plan = ExplainPlan(layers=["features.2"], limit=6, cam_batch_size=4)

    mine = camlens.explain_model(model, loader, tmp_path / "mine", plan)
    ref = camlens.explain_model(wrapped, data, tmp_path / "ref", plan)
    got, want = mine.galleries.explanations["gradcam"], ref.galleries.explanations["gradcam"]
    assert torch.equal(mine.galleries.mistakes.indices, ref.galleries.mistakes.indices)
    assert torch.equal(got.pred_maps, want.pred_maps) and torch.equal(got.logits, want.logits)
    assert got.layers == ("model.features.2",) and len(got) > 0
    assert got.pred_maps.amax() > 0  # maps with something in them, or equality proves little
    assert "DataLoader over TinyCIFAR" in (tmp_path / "mine" / "report.html").read_text()

    scored = ExplainPlan(layers=["features.2"], compare_limit=3)
    mine = camlens.compare(
        model, loader, tmp_path / "cmp-mine", scored, CompareConfig(sanity_images=2)
    )
    ref = camlens.compare(
        wrapped, data, tmp_path / "cmp-ref", scored, CompareConfig(sanity_images=2)
    )
    assert mine.rows == ref.rows and mine.sanity == ref.sanity

    other = user_net(1)
    mine = camlens.diff_models(model, other, loader, plan=plan)
    ref = camlens.diff_models(wrapped, Classifier(other, MEAN, STD), data, plan=plan)
    assert mine.layers == ("model.features.2",)
    for g in mine.groups:
        assert torch.equal(mine.groups[g], ref.groups[g])
        assert all(torch.equal(a, b) for a, b in zip(mine.maps[g], ref.maps[g], strict=True))
    assert len(mine.groups["shared"]) > 0 and mine.maps["shared"][0].amax() > 0


def readme_python() -> str:
    """The README's Python example, as the reader copies it."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    return re.search(r"```python\n(import camlens\n.*?)```", text, re.S).group(1)


def test_the_readme_python_example_runs_as_written_on_a_normalised_cifar_loader(
    tmp_path, monkeypatch, capsys, one_thread
):
    """The README's example, run as it is, on a torchvision-style CIFAR-10 DataLoader
    normalised with CIFAR's mean/std and a model trained on such images: each of its three
    calls finds the Normalize and says so, and the model is fed the images it was trained on."""
    cifar_mean, cifar_std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    torch.manual_seed(0)
    model = ResNet18(10, width=8, mean=(0, 0, 0), std=(1, 1, 1)).eval()  # normalised input
    sample = load_sample()
    pixels = sample.test.images[:6]  # (6, 3, 32, 32) uint8
    shift = torch.tensor(cifar_mean)[:, None, None], torch.tensor(cifar_std)[:, None, None]
    normalised = (pixels / 255 - shift[0]) / shift[1]
    with torch.no_grad():
        logits = model(normalised)
    # three right and three wrong: compare scores both
    labels = torch.where(torch.arange(6) % 2 == 0, logits.argmax(1), (logits.argmax(1) + 1) % 10)
    dataset = CIFAR10(
        pixels.permute(0, 2, 3, 1).numpy(),
        labels.tolist(),
        sample.classes,
        transform=Compose([ToTensor(), Normalize(cifar_mean, cifar_std)]),
    )
    test_loader = torch.utils.data.DataLoader(dataset, batch_size=4)
    monkeypatch.chdir(tmp_path)
    scope = {"model": model, "test_loader": test_loader}
    exec(readme_python(), scope)

    said = capsys.readouterr().out
    assert said.count("read from the Normalize in CIFAR10.transform") == 3  # one per call
    outcome, trust, watch = scope["outcome"], scope["trust"], scope["watch"]
    torch.testing.assert_close(outcome.evaluation.logits, logits, atol=1e-4, rtol=1e-4)
    assert len(outcome.evaluation.mistakes) == 3 and outcome.report.is_file()
    assert {r["subset"] for r in trust.rows} == {"mistakes", "correct"}
    watch.epoch(5)
    watch.finish()
    strips = json.loads((tmp_path / "runs" / "mine" / "over-epochs.json").read_text())
    for row in strips["images"]:
        i = row["index"]
        assert row["pred_prob"][-1] == pytest.approx(float(logits[i].softmax(0).max()), abs=1e-3)


def test_the_counterfactual_is_off_by_default_above_64_px_and_says_so(capsys):
    """Its seven forwards per mistake cost hours of imputation at 224 px (docs/performance.md):
    by default on at 32 and 64 px, off above with one line naming the size and the flag; asked
    for, it runs at any size, silently. Planted: the default on at every size: red."""
    from camlens.pipeline.galleries import prepare_plan

    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()  # fmt: skip
    assert prepare_plan(model, ExplainPlan(), 32).counterfactual is True
    assert prepare_plan(model, ExplainPlan(), 64).counterfactual is True
    assert capsys.readouterr().err == ""
    assert prepare_plan(model, ExplainPlan(), 224).counterfactual is False
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "224 px" in err and "--counterfactual" in err
    assert prepare_plan(model, ExplainPlan(counterfactual=True), 224).counterfactual is True
    assert capsys.readouterr().err == ""


def test_a_gallery_reads_only_the_chosen_mistakes_photos(tmp_path):
    """Of the split's photos, the gallery reads only the `limit` it explains: every mistake's
    was 6 GB at 20,000 photos of 224 px (benchmarks/scale.py). Planted: the images of every
    mistake read before the selection: red."""
    torch.manual_seed(0)
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(40) % 5
    reads = []

    class Spy:  # the split's images, recording how many rows each read asks for
        shape = images.shape

        def __len__(self):
            return len(images)

        def __getitem__(self, idx):
            out = images[idx]
            reads.append(out.shape[0] if out.ndim == 4 else 1)
            return out

    classes = tuple(f"k{i}" for i in range(5))
    data = Dataset(Split(images, labels), Split(Spy(), labels), classes, "spy", "none")
    model = ResNet18(5, width=8).eval()
    plan = ExplainPlan(layers=("layer4",), limit=3, counterfactual=False)
    mistakes = camlens.evaluate(model, Split(images, labels)).mistakes
    assert len(mistakes) > 3
    write_galleries(model, data, tmp_path, plan, mistakes=mistakes)
    assert sum(reads) == 3
