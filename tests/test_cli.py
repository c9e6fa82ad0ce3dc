import csv
import json

import pytest

from camlens.cli import build_parser, main

TINY = ("--width", 8, "--batch-size", 8, "--no-progress")  # a fast ResNet18 for the tiny data


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def trained(tmp_path, tiny_folder, capsys):
    run(
        capsys,
        "train",
        "--data",
        tiny_folder,
        "--out",
        tmp_path / "r",
        "--epochs",
        1,
        *TINY,
    )
    return tmp_path / "r" / "checkpoint.safetensors"


def test_train_then_evaluate_end_to_end(tmp_path, tiny_folder, capsys):
    run_dir = tmp_path / "run"
    code, out, err = run(
        capsys,
        "train",
        "--data",
        tiny_folder,
        "--out",
        run_dir,
        "--epochs",
        1,
        *TINY,
    )
    assert code == 0, err
    assert "epoch 1/1" in err + out and "test loss" in err + out
    for name in ("checkpoint.safetensors", "checkpoint.json", "metrics.jsonl", "curves.png"):
        assert (run_dir / name).is_file(), name
    code, out, err = run(
        capsys,
        "evaluate",
        "--checkpoint",
        run_dir / "checkpoint.safetensors",
        "--data",
        tiny_folder,
        "--out",
        tmp_path / "eval",
        "--no-progress",
    )
    assert code == 0, err
    assert "test accuracy" in out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    rows = list(csv.DictReader((tmp_path / "eval" / "misclassified.csv").read_text().splitlines()))
    assert len(rows) == metrics["misclassified"] == round((1 - metrics["test_acc"]) * 24)
    assert (tmp_path / "eval" / "confusion.png").is_file()


def test_summary_prints_the_parameter_count(capsys):
    code, out, _ = run(capsys, "summary", "--norm", "layer")
    assert code == 0 and "total parameters: 11,173,962" in out and "GroupNorm" in out


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "--data", "/no/such/place", "--out", "x", "--epochs", "1"], "/no/such/place"),
        (["train", "--data", "DATA", "--out", "x", "--epochs", "0"], "epochs must be at least 1"),
        (
            ["evaluate", "--checkpoint", "/no/ck.safetensors", "--data", "DATA", "--out", "x"],
            "ck.safetensors",
        ),
    ],
)
def test_user_errors_are_one_line_and_exit_2(tmp_path, tiny_folder, capsys, argv, needle):
    argv = [str(tiny_folder) if a == "DATA" else a for a in argv]
    argv = [str(tmp_path / a) if a == "x" else a for a in argv]
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "--data", "d", "--out", "o", "--norm", "instance"], "--norm"),
        (["train", "--data", "d", "--out", "o", "--epochs", "many"], "--epochs"),
        (
            ["explain", "--checkpoint", "c", "--data", "d", "--out", "o", "--method", "x"],
            "--method",
        ),
        (["train", "--out", "o"], "--data"),
        (
            [
                "evaluate",
                "--checkpoint",
                "shipped",
                "--data",
                "sample",
                "--out",
                "o",
                "--device",
                "tpu",
            ],
            "--device",
        ),
    ],
)
def test_bad_flags_are_one_line_with_a_pointer_to_help(tmp_path, monkeypatch, capsys, argv, needle):
    monkeypatch.chdir(tmp_path)
    try:
        code = main(argv)
    except SystemExit as e:  # argparse exits by itself
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and needle in err and err.count("\n") == 1, err


def test_corrupt_image_is_a_one_line_error(tmp_path, capsys):
    from conftest import write_image_folder

    write_image_folder(tmp_path / "d", n_train=1, n_test=1)
    (tmp_path / "d" / "train" / "cat" / "bad.png").write_bytes(b"not a png")
    code, _, err = run(
        capsys,
        "train",
        "--data",
        tmp_path / "d",
        "--out",
        tmp_path / "r",
        "--epochs",
        1,
        "--no-progress",
    )
    assert code == 2 and "bad.png" in err and err.count("\n") == 1


def test_checkpoint_for_other_classes_is_refused(tmp_path, trained, capsys):
    from conftest import write_image_folder

    write_image_folder(tmp_path / "other", n_train=1, n_test=1, classes=("apple", "pear"))
    code, _, err = run(
        capsys,
        "evaluate",
        "--checkpoint",
        trained,
        "--data",
        tmp_path / "other",
        "--out",
        tmp_path / "e",
        "--no-progress",
    )
    assert code == 2 and "apple" in err and err.count("\n") == 1


def test_every_command_shows_an_example_in_its_help():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        assert "example:" in sub.format_help() and f"camlens {name}" in sub.format_help(), name


def test_train_flags_come_from_the_config_dataclass():
    from dataclasses import fields

    from camlens.train import TrainConfig

    args = build_parser().parse_args(["train", "--data", "d", "--out", "o"])
    for f in fields(TrainConfig):
        assert getattr(args, f.name) == f.default, f.name


def test_explain_writes_the_gallery(tmp_path, tiny_folder, trained, capsys):
    code, out, err = run(
        capsys,
        "explain",
        "--checkpoint",
        trained,
        "--data",
        tiny_folder,
        "--out",
        tmp_path / "x",
        "--layer",
        "layer3,layer4",
        "--limit",
        5,
        "--no-progress",
    )
    assert code == 0, err
    rows = list(csv.DictReader((tmp_path / "x/gallery/index.csv").read_text().splitlines()))
    assert 0 < len(rows) <= 5 and "layer3 8x8" in out and "layer4 4x4" in out
    assert set(rows[0]) >= {"layer3_pred_max", "layer4_true_max"}


@pytest.mark.parametrize(
    "extra, needle",
    [(["--layer", "layer9"], "layer3.1.conv2"), (["--true", "zebra"], "zebra")],
)
def test_explain_bad_choices_are_one_line(tmp_path, tiny_folder, trained, capsys, extra, needle):
    code, _, err = run(
        capsys,
        "explain",
        "--checkpoint",
        trained,
        "--data",
        tiny_folder,
        "--out",
        tmp_path / "x",
        "--no-progress",
        *extra,
    )
    assert code == 2 and needle in err and err.count("\n") == 1


def test_tensorboard_events_mirror_the_metrics(tmp_path, tiny_folder, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    code, _, err = run(
        capsys,
        "train",
        "--data",
        tiny_folder,
        "--out",
        tmp_path / "r",
        "--epochs",
        2,
        *TINY,
        "--tensorboard",
    )
    assert code == 0, err
    events = EventAccumulator(str(tmp_path / "r" / "tensorboard"))
    events.Reload()
    history = [json.loads(x) for x in (tmp_path / "r/metrics.jsonl").read_text().splitlines()]
    logged = events.Scalars("accuracy/test")
    assert [e.step for e in logged] == [1, 2]
    assert [e.value for e in logged] == pytest.approx([h["test_acc"] for h in history])


def test_shipped_checkpoint_evaluates_on_the_bundled_sample(tmp_path, capsys):
    code, out, err = run(
        capsys,
        "evaluate",
        "--checkpoint",
        "shipped",
        "--data",
        "sample",
        "--out",
        tmp_path,
        "--no-progress",
    )
    assert code == 0, err
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["images"] == 1000 and f"{metrics['test_acc']:.2%}" in out


def test_run_produces_every_artefact_and_resumes(tmp_path, tiny_folder, capsys):
    argv = [
        "run",
        "--data",
        tiny_folder,
        "--out",
        tmp_path / "r",
        "--epochs",
        1,
        *TINY,
        "--layer",
        "layer4",
    ]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    r = tmp_path / "r"
    for name in (
        "checkpoint.safetensors",
        "checkpoint.json",
        "metrics.jsonl",
        "curves.png",
        "eval/misclassified.csv",
        "eval/confusion.png",
        "gallery/index.csv",
        "report.html",
    ):
        assert (r / name).is_file(), name
    assert f"report: {r / 'report.html'}" in out
    weights = (r / "checkpoint.safetensors").read_bytes()
    code, out, err = run(capsys, *argv)  # a finished run is not trained again
    assert code == 0, err
    assert "resuming" in err + out and (r / "checkpoint.safetensors").read_bytes() == weights


@pytest.mark.slow
def test_demo_reports_what_evaluate_says(tmp_path, capsys):
    code, out, err = run(capsys, "demo", "--out", tmp_path / "demo", "--layer", "layer4")
    assert code == 0, err
    assert f"report: {tmp_path / 'demo' / 'report.html'}" in out.splitlines()[-1]
    html = (tmp_path / "demo" / "report.html").read_text()
    rows = list(csv.DictReader((tmp_path / "demo/gallery/index.csv").read_text().splitlines()))
    assert len(rows) > 0 and html.count('class="item') >= len(rows)
    run(
        capsys,
        "evaluate",
        "--checkpoint",
        "shipped",
        "--data",
        "sample",
        "--out",
        tmp_path / "ev",
        "--no-progress",
    )
    accuracy = json.loads((tmp_path / "ev" / "metrics.json").read_text())["test_acc"]
    assert f"{accuracy:.2%}" in out and f"{accuracy:.2%}" in html
    assert len(rows) == round((1 - accuracy) * 1000)
