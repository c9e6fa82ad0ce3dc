"""The library pipeline is what the CLI runs: the same call writes the same files."""

import json
import re

import pytest
import torch
from safetensors.torch import load_file

from camlens.cli import main
from camlens.data import load_dataset
from camlens.explain import ExplainError
from camlens.pipeline import run
from camlens.train import TrainConfig


def test_run_writes_what_the_cli_writes(tmp_path, tiny_folder, capsys):
    config = TrainConfig(epochs=1, width=8, batch_size=8)
    data = load_dataset(tiny_folder, progress=False)
    outcome = run(config, data, tmp_path / "lib", layers=["layer4"], limit=5, progress=False)
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
        run(TrainConfig(epochs=1, width=8), data, tmp_path / "r", layers=["layer9"])
    assert not (tmp_path / "r").exists()  # no hours of training before the error
