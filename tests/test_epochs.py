"""train --keep-every and explain --over-epochs: the maps of the final mistakes, epoch by epoch."""

import json

import pytest
import torch
from safetensors import safe_open

from camlens.cam import CamConfig, create
from camlens.cli import main
from camlens.data import load_dataset
from camlens.epochs import explain_over_epochs, kept_epochs
from camlens.evaluate import as_float_images, predict
from camlens.explain import ExplainPlan
from camlens.model import load_checkpoint
from camlens.train import TrainConfig, train

TINY = {"width": 8, "batch_size": 8, "eval_batch_size": 32}


@pytest.fixture(scope="module")
def kept_run(tmp_path_factory, tiny_folder, one_thread):
    out = tmp_path_factory.mktemp("run")
    data = load_dataset(tiny_folder, progress=False)
    config = TrainConfig(epochs=3, keep_every=2, **TINY)
    train(config, data, out, progress=False)
    return out, data


def test_keep_every_keeps_those_epochs_in_half_precision(kept_run):
    out, _ = kept_run
    kept = kept_epochs(out)
    assert [e for e, _ in kept] == [2]  # every 2nd of 3 epochs
    with safe_open(str(kept[0][1]), "pt") as f:
        assert f.get_tensor("conv1.weight").dtype == torch.float16
    assert load_checkpoint(kept[0][1])[1]["epoch"] == 2


def test_strips_follow_each_kept_model(kept_run, tmp_path):
    out, data = kept_run
    strips, files = explain_over_epochs(out, data, tmp_path, ExplainPlan(), strips=4)
    assert strips.epochs == [2, 3]  # the kept epoch, then the final checkpoint
    final, _ = load_checkpoint(out / "checkpoint.safetensors")
    logits = predict(final, data.test.images)
    assert (logits.argmax(1)[strips.indices] != strips.labels).all()  # final mistakes
    assert strips.preds.tolist() == logits.argmax(1)[strips.indices].tolist()
    for j, path in enumerate([kept_epochs(out)[0][1], out / "checkpoint.safetensors"]):
        model, _ = load_checkpoint(path)
        probs = predict(model, data.test.images[strips.indices]).softmax(1)
        assert torch.allclose(strips.pred_probs[j], probs.gather(1, strips.preds[:, None])[:, 0])
        assert torch.allclose(strips.label_probs[j], probs.gather(1, strips.labels[:, None])[:, 0])
        x = as_float_images(data.test.images[strips.indices])
        with create("gradcam", model, "layer4", CamConfig(normalize="pair")) as engine:
            pair = engine.explain_pair(x, strips.labels, preds=strips.preds)
        assert torch.allclose(strips.pred_maps[j], pair.pred.maps, atol=1e-6)
        assert torch.allclose(strips.label_maps[j], pair.label.maps, atol=1e-6)
    saved = json.loads(files["over-epochs.json"].read_text())
    assert saved["epochs"] == [2, 3] and len(saved["images"]) == len(strips.indices)
    assert files["over-epochs.png"].stat().st_size > 1000


def test_cli_over_epochs_and_its_refusals(kept_run, tiny_folder, tmp_path, capsys):
    out, _ = kept_run

    def cli(*argv):
        code = main([str(a) for a in argv])
        return code, capsys.readouterr()

    code, got = cli(
        "explain",
        "--over-epochs",
        out,
        "--data",
        tiny_folder,
        "--out",
        tmp_path / "e",
        "--strips",
        2,
        "--device",
        "cpu",
        "--no-progress",
    )
    assert code == 0, got.err
    assert "epochs 2, 3" in got.out and (tmp_path / "e" / "over-epochs.png").is_file()
    assert got.out.startswith("2 mistakes"), got.out  # --strips, not the gallery's --limit
    bare = tmp_path / "bare"
    (bare / "epochs").mkdir(parents=True)
    for name in ("checkpoint.safetensors", "checkpoint.json"):
        (bare / name).write_bytes((out / name).read_bytes())
    code, got = cli(
        "explain",
        "--over-epochs",
        bare,
        "--data",
        tiny_folder,
        "--out",
        tmp_path / "f",
        "--device",
        "cpu",
        "--no-progress",
    )
    assert code == 2 and "--keep-every" in got.err and len(got.err.strip().splitlines()) == 1
    assert not (tmp_path / "f").exists()
    code, got = cli("explain", "--data", tiny_folder, "--out", tmp_path / "g", "--no-progress")
    assert code == 2 and "--checkpoint" in got.err


def test_a_run_that_keeps_epochs_reports_the_strips(tmp_path, tiny_folder, one_thread):
    from camlens.pipeline import run

    data = load_dataset(tiny_folder, progress=False)
    outcome = run(
        TrainConfig(epochs=2, keep_every=1, **TINY),
        data,
        tmp_path,
        ExplainPlan(layers=("layer4",), limit=4),
    )
    page = outcome.report.read_text()
    assert "Maps across training" in page and 'href="#epochs"' in page
    assert json.loads((tmp_path / "over-epochs.json").read_text())["epochs"] == [1, 2]
