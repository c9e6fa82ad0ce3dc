import argparse
import csv
import json
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from camlens.cli import build_parser, main
from camlens.cli.commands import config_from_args
from camlens.train import RunError

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
        (["train", "--data", "DATA", "--out", "x", "--epochs", "0"], "--epochs must be at least 1"),
        (
            ["train", "--data", "DATA", "--out", "x", "--eval-batch-size", "0"],
            "--eval-batch-size must be at least 1, got 0",  # the flag, not the field
        ),
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
        (
            ["explain", "--checkpoint", "c", "--data", "d", "--out", "o", "--precision", "fp8"],
            "--precision",
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


def test_a_corrupt_image_is_skipped_in_one_line(tmp_path, capsys):
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
    # issue 33: an undecodable file is named in one line and left out; the job goes on
    said = [line for line in err.splitlines() if "bad.png" in line]
    assert code == 0 and len(said) == 1 and "skipped" in said[0]


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


def _commands() -> dict:
    return build_parser()._subparsers._group_actions[0].choices


def test_every_command_shows_an_example_in_its_help():
    for name, sub in _commands().items():
        text = sub.format_help()
        assert "example:" in text and f"camlens {name}" in text, name
        # what a user has: cifar10, sample, a folder; not this repository's development data
        assert "shared/data" not in text and "cifar10-jpeg" not in text, name


def _example_lines(text: str) -> list[str]:
    """The `camlens ...` command lines of a text, continuation lines joined, comments cut;
    lines with placeholders ([optional] flags, `...`) are usage sketches, not examples."""
    joined = re.sub(r"\\\n\s*", " ", text)
    lines = []
    for line in joined.splitlines():
        m = re.match(r"^\s*(?:torchrun .*?-m |torchrun .*?--no-python )?camlens ([a-z].*)$", line)
        if not m:
            continue
        command = m.group(1).split("  #")[0].split(" # ")[0].strip()
        if "[" in command or "..." in command or command.split()[0] not in _commands():
            continue
        lines.append(command)
    return lines


def test_every_example_in_help_and_docs_parses_with_todays_flags():
    """Each example in a command's --help, the README and docs/ is accepted by the parser as
    written (a renamed or removed flag turns this red)."""
    texts = {name: sub.format_help() for name, sub in _commands().items()}
    root = Path(__file__).parents[1]
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        fences = re.findall(r"```(?:bash|console|sh)?\n(.*?)```", doc.read_text(), re.S)
        texts[doc.name] = "\n".join(fences)
    parsed = 0
    for where, text in texts.items():
        for command in _example_lines(text):
            try:
                build_parser().parse_args(shlex.split(command))
            except SystemExit:
                raise AssertionError(f"{where}: `camlens {command}` does not parse") from None
            parsed += 1
    assert parsed >= 25, parsed  # every --help has one or more, the docs many


def test_a_flag_means_the_same_in_every_command():
    helps: dict[str, dict[str, str]] = {}
    for name, sub in _commands().items():
        for action in sub._actions:
            for flag in action.option_strings:
                meaning = re.sub(r"\(default: [^)]*\)", "", action.help or "").strip()
                helps.setdefault(flag, {})[name] = meaning
    helps["--limit"].pop("compare")  # caps each compared subset, mistakes and correct images
    assert "diff" not in helps["--limit"] or helps["--cards"]["diff"] == helps["--limit"]["diff"]
    helps["--limit"].pop("diff", None)  # --cards's old name: cards per group on the page
    for flag in ("--method", "--layer", "--cam-batch-size", "--eval-batch-size", "--limit"):
        assert len(set(helps[flag].values())) == 1, (flag, helps[flag])
    assert set(helps["--batch-size"]) == {"train", "run"}  # the training batch only
    assert set(helps["--cam-batch-size"]) == {"demo", "run", "explain", "compare", "diff", "report"}
    assert set(helps["--eval-batch-size"]) == {"train", "run", "evaluate", "compare", "report"}


def test_config_errors_name_the_flag_and_keep_the_rest_intact():
    @dataclass(frozen=True)
    class Config:
        cache_dir: str = "x"

        def __post_init__(self):
            raise ValueError(f"cache_dir must exist, not {self.cache_dir}")

    args = argparse.Namespace(cache_dir="/tmp/my_runs/run_1")
    with pytest.raises(RunError) as error:
        config_from_args(args, Config)
    assert str(error.value) == "--cache-dir must exist, not /tmp/my_runs/run_1"


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
        "--method",
        "gradcam,hirescam",
        "--limit",
        5,
        "--no-progress",
    )
    assert code == 0, err
    assert "layer3 8x8" in out and "layer4 4x4" in out
    galleries = {}
    for method in ("gradcam", "hirescam"):  # one gallery per method, side by side
        index = tmp_path / "x" / "gallery" / method / "index.csv"
        galleries[method] = list(csv.DictReader(index.read_text().splitlines()))
        assert f"gallery: {index.parent}/pages" in out
    rows = galleries["gradcam"]
    assert 0 < len(rows) <= 5 and set(rows[0]) >= {"layer3_pred_max", "layer4_label_max"}
    assert [r["index"] for r in rows] == [r["index"] for r in galleries["hirescam"]]
    assert [r["layer3_pred_max"] for r in rows] != [
        r["layer3_pred_max"] for r in galleries["hirescam"]
    ]


@pytest.mark.layout
def test_explain_filters_by_label_and_pred(tmp_path, tiny_folder, trained, capsys):
    def gallery_rows(*extra) -> list[dict]:
        out = tmp_path / str(len(list(tmp_path.iterdir())))
        argv = ["explain", "--checkpoint", trained, "--data", tiny_folder, "--out", out]
        code, _, err = run(capsys, *argv, "--no-progress", *extra)
        assert code == 0, err
        index = out / "gallery" / "gradcam" / "index.csv"
        rows = csv.DictReader(index.read_text().splitlines())
        return [{k: v for k, v in r.items() if k not in ("card", "page")} for r in rows]

    def same(rows: list[dict], want: list[dict]) -> None:
        """The same mistakes, each with its numbers. A filtered run explains its mistakes in
        other CAM batches, so its maps are equal to rounding only (docs/many-gpus.md): raw
        maxima to rtol 1e-5; the counterfactual's drops (4 decimals) to 2e-3, as near-tied
        pixels may go in another order; the rest (which image, classes, prediction's numbers,
        read off the same predictions) exactly."""
        assert [r.keys() for r in rows] == [r.keys() for r in want]
        for got, ref in zip(rows, want, strict=True):
            for key, value in got.items():
                if key.endswith("_max"):
                    assert float(value) == pytest.approx(float(ref[key]), rel=1e-5), key
                elif key.startswith("cf") and key.endswith(("_drop", "_drop_random")):
                    assert float(value) == pytest.approx(float(ref[key]), abs=2e-3), key
                elif key in ("index", "label", "pred", "confidence", "margin", "cf_region"):
                    assert value == ref[key], key

    everything = gallery_rows()
    label, pred = everything[0]["label"], everything[0]["pred"]
    same(gallery_rows("--label", label), [r for r in everything if r["label"] == label])
    # old scripts run: the same filter, the same batches, so the same rows exactly
    assert gallery_rows("--true", label) == gallery_rows("--label", label)
    same(gallery_rows("--pred", pred), [r for r in everything if r["pred"] == pred])


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--layer", "layer9"], "layer3.1.conv2"),
        (["--label", "zebra"], "zebra"),
        (["--pred", "zebra"], "zebra"),
    ],
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


def wandb_records(run_file: Path) -> list:
    """The protobuf records of an offline W&B run file, read without W&B's own reader (gone
    from wandb 0.2x+): a 7-byte ":W&B" header, then LevelDB log records (crc32, length, type)
    in 32 KiB blocks; types 1 full, 2 first, 3 middle, 4 last."""
    from wandb.proto import wandb_internal_pb2

    raw, block = run_file.read_bytes(), 32768
    assert raw[:4] == b":W&B", raw[:8]
    pos, pending, records = 7, b"", []
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(raw[pos + 4 : pos + 6], "little"), raw[pos + 6]
        if kind == 0:  # zero padding at the end of a block
            pos += block - pos % block
            continue
        pending += raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _key(item) -> str:
    return item.key or ".".join(item.nested_key)


def test_wandb_offline_mirrors_the_metrics_and_resume_continues_the_run(
    tmp_path, tiny_folder, capsys, monkeypatch
):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # no key: offline, never the network
    monkeypatch.chdir(tmp_path)  # nothing may land in the current directory
    out = tmp_path / "r"
    from camlens.train import WandbLogger

    log_epoch = WandbLogger.__call__

    def killed_after_epoch_1(self, metrics):
        log_epoch(self, metrics)
        if metrics["epoch"] == 1:
            raise KeyboardInterrupt  # as Ctrl-C right after epoch 1 is saved

    monkeypatch.setattr(WandbLogger, "__call__", killed_after_epoch_1)
    argv = ("train", "--data", tiny_folder, "--out", out, "--epochs", 2, *TINY, "--wandb")
    assert run(capsys, *argv)[0] == 130
    monkeypatch.setattr(WandbLogger, "__call__", log_epoch)
    code, stdout, err = run(capsys, *argv, "--resume")
    assert code == 0, err
    assert "resuming" in stdout + err and "wandb sync" in stdout + err
    assert not (tmp_path / "wandb").exists()
    run_id = (out / "wandb" / "run-id").read_text().strip()
    files = sorted((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2 and all(f.name == f"run-{run_id}.wandb" for f in files)
    history = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    logged, summary, config = {}, {}, {}
    for f in files:
        # W&B's service may still be appending after finish() returns: wait for its exit record
        for _ in range(100):
            records = wandb_records(f)
            if any(r.WhichOneof("record_type") == "exit" for r in records):
                break
            time.sleep(0.1)
        for record in records:
            kind = record.WhichOneof("record_type")
            if kind == "history":
                items = {_key(i): json.loads(i.value_json) for i in record.history.item}
                if "test_acc" in items:
                    logged[items["epoch"]] = items["test_acc"]
            elif kind == "summary":
                summary.update({_key(i): json.loads(i.value_json) for i in record.summary.update})
            elif kind == "run":
                config.update({_key(i): json.loads(i.value_json) for i in record.run.config.update})
    assert logged == pytest.approx({h["epoch"]: h["test_acc"] for h in history})
    assert summary["test_acc"] == pytest.approx(history[-1]["test_acc"])
    assert config["width"] == 8 and config["epochs"] == 2  # the TrainConfig


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


def test_export_resaves_a_checkpoint_in_the_precision_asked(tmp_path, capsys):
    from safetensors.torch import load_file

    from camlens.model import SHIPPED_MODEL

    code, out, err = run(capsys, "export", "--checkpoint", "shipped", "--out", tmp_path / "m")
    assert code == 0, err
    code, out, err = run(capsys, "export", "--checkpoint", tmp_path / "m", "--out", tmp_path / "f")
    assert code == 0, err
    code, out, err = run(
        capsys,
        "export",
        "--checkpoint",
        tmp_path / "f.json",
        "--out",
        tmp_path / "s",
        "--dtype",
        "fp32",
    )
    assert code == 0 and f"wrote {tmp_path / 's.safetensors'}" in out, err
    shipped = load_file(str(SHIPPED_MODEL.with_suffix(".safetensors")))
    for name, dtype in (("m", "float16"), ("f", "float16"), ("s", "float32")):
        weights = load_file(str(tmp_path / f"{name}.safetensors"))
        assert str(weights["linear.weight"].dtype) == f"torch.{dtype}"
        assert weights["linear.weight"].half().equal(shipped["linear.weight"].half())
    meta = json.loads((tmp_path / "s.json").read_text())
    assert meta["weights_dtype"] == "fp32" and len(meta["classes"]) == 10


@pytest.mark.layout
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
        "gallery/gradcam/index.csv",
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
    argv = ("demo", "--out", tmp_path / "demo", "--layer", "layer4", "--counterfactual")
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert f"report: {tmp_path / 'demo' / 'report.html'}" in out.splitlines()[-1]
    html = (tmp_path / "demo" / "report.html").read_text()
    index = tmp_path / "demo" / "gallery" / "gradcam" / "index.csv"
    rows = list(csv.DictReader(index.read_text().splitlines()))
    assert len(rows) > 0 and html.count('class="item') >= len(rows)
    # --counterfactual: its columns and verdicts in index.csv, its per-pair sums in the report
    assert all(r["cf_region"] == "contrast" and r["cf_verdict"] for r in rows)
    assert 'id="cf-pairs"' in html and "of the contrast region turns" in html
    # the report's total over all mistakes: index.csv's own flags, and the per-pair lines summed
    pairs = re.findall(r"turns (\d+) of (\d+) into \w+; random regions turn (\d+)", html)
    by_map = sum(r["cf10_to_true"] == "True" for r in rows)
    assert by_map == sum(int(m) for m, _, _ in pairs)
    by_random = sum(int(r) for _, _, r in pairs)
    assert (
        f"All {len(rows)} mistakes shown: the map turns {by_map} into their true class; "
        f"random regions turn {by_random}." in html
    )
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


def test_compare_prints_each_methods_sanity_state_and_the_paired_verdicts(
    tmp_path, tiny_folder, trained, capsys
):
    code, out, err = run(
        capsys,
        "compare",
        "--checkpoint",
        trained,
        "--data",
        tiny_folder,
        "--out",
        tmp_path / "cmp",
        "--method",
        "gradcam,eigencam",
        "--layer",
        "layer4",
        "--limit",
        2,
        "--device",
        "cpu",
        "--no-progress",
    )
    assert code == 0, err
    lines = out.splitlines()
    start = lines.index("sanity and paired verdicts:")
    states = dict(
        re.match(r"  (\w+) layer4: ([\w-]+)", line).groups() for line in lines[start + 1 :][:2]
    )
    assert set(states) == {"gradcam", "eigencam"}
    payload = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert states == {m: s["state"] for m, s in payload["sanity"].items()}
    assert states["eigencam"] != "passes"  # it never reads the class
    failing = next(line for line in lines if line.startswith("  eigencam layer4: "))
    assert (
        " — " in failing and failing.split(" — ")[1] == payload["sanity"]["eigencam"]["reasons"][0]
    )
    said = lines[start + 3 :]
    assert said[0].strip() == payload["headline"][0]
    assert said[0].strip().startswith("too few images for the paired verdicts on 2 mistakes")


def test_old_flag_names_are_aliases_of_the_plan_fields():
    """compare's --seed is --metric-seed, and --precision is --cam-precision where nothing
    trains; in `run` --precision stays the training's. Planted: the aliases left out (red)."""
    parse = build_parser().parse_args
    base = ["--model", "shipped", "--data", "sample", "--out", "o"]
    assert parse(["compare", *base, "--seed", "5"]).metric_seed == 5
    explained = parse(["explain", *base, "--precision", "bf16"])
    assert explained.cam_precision == "bf16"
    ran = parse(["run", "--data", "sample", "--out", "o", "--precision", "bf16"])
    assert ran.precision == "bf16" and ran.cam_precision == "fp32"
