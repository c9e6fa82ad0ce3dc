import csv
import json

import pytest

from camlens.cli import build_parser, main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


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
        "--width",
        8,
        "--batch-size",
        8,
        "--no-progress",
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


def test_checkpoint_for_other_classes_is_refused(tmp_path, tiny_folder, capsys):
    from conftest import write_image_folder

    run(
        capsys,
        "train",
        "--data",
        tiny_folder,
        "--out",
        tmp_path / "r",
        "--epochs",
        1,
        "--width",
        8,
        "--batch-size",
        8,
        "--no-progress",
    )
    write_image_folder(tmp_path / "other", n_train=1, n_test=1, classes=("apple", "pear"))
    code, _, err = run(
        capsys,
        "evaluate",
        "--checkpoint",
        tmp_path / "r" / "checkpoint.safetensors",
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
