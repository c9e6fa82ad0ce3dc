"""Build the files camlens ships in `src/camlens/assets/`.

    python tools/make_assets.py sample --data ../shared/data/cifar10-jpeg.tar.gz
    python tools/make_assets.py model --result .gpu/result --run c
    python tools/make_assets.py model --result .gpu/result --run ln-f --group ln \
        --name shipped-layer

`sample` writes the 1,000-image test sample (first 100 test images of each class).
`model` installs the checkpoint that `benchmarks/gpu_check.sh` trained and exported in fp16
(shards `GROUP.safetensors.part-*` and `GROUP.json`) as the bundled model NAME:
it joins the shards, checks that the pair loads, and adds the training history (the run's
metrics.jsonl) and the data label to the json, so the demo report can show the curves.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from camlens.data import SAMPLE_PATH, load_dataset, save_sample
from camlens.evaluate import evaluate
from camlens.model import SHIPPED_MODELS, load_checkpoint

DATA_LABEL = "CIFAR-10 (JPEG q75)"


def make_sample(data: str) -> None:
    dataset = load_dataset(data)
    path = save_sample(dataset, SAMPLE_PATH, per_class=100, label=f"{DATA_LABEL} test sample")
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


def install_model(result: Path, run: str, data: str, group: str, name: str) -> None:
    shards = sorted(result.glob(f"{group}.safetensors.part-*"))
    if not shards:
        raise SystemExit(f"no {group}.safetensors.part-* in {result}")
    weights = b"".join(p.read_bytes() for p in shards)
    meta = json.loads((result / f"{group}.json").read_text())
    stem = SHIPPED_MODELS[name]
    history = [
        json.loads(line) for line in (result / f"metrics_{run}.jsonl").read_text().splitlines()
    ]
    if history[-1]["test_acc"] != meta["metrics"]["test_acc"]:
        raise SystemExit(f"metrics_{run}.jsonl is not the history of this checkpoint")
    meta.update(
        data_source=f"{Path(data).name} (CIFAR-10 re-encoded as JPEG q75)",
        data_label=DATA_LABEL,
        history=history,
    )
    stem.with_suffix(".safetensors").write_bytes(weights)
    stem.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    model, _ = load_checkpoint(stem)  # the pair must load as shipped
    # the accuracy users will reproduce: fp16 weights, fp32 CPU inference, `camlens evaluate`
    ev = evaluate(model, load_dataset(data, progress=False).test)
    meta["evaluation"] = {
        "test_acc": ev.accuracy,
        "test_loss": ev.loss,
        "command": f"camlens evaluate --checkpoint {name} --data $JPEG",
    }
    stem.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"installed {stem.with_suffix('.safetensors')} ({len(weights) / 1e6:.1f} MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("sample")
    p.add_argument("--data", default="../shared/data/cifar10-jpeg.tar.gz")
    p = sub.add_parser("model")
    p.add_argument("--result", type=Path, default=Path(".gpu/result"))
    p.add_argument("--run", required=True, help="the run gpu_check.sh picked (its log says)")
    p.add_argument("--group", default="shipped", help="the shards' name: GROUP.safetensors.part-*")
    p.add_argument("--name", default="shipped", choices=sorted(SHIPPED_MODELS))
    p.add_argument("--data", default="../shared/data/cifar10-jpeg.tar.gz")
    args = parser.parse_args()
    if args.what == "sample":
        make_sample(args.data)
    else:
        install_model(args.result, args.run, args.data, args.group, args.name)


if __name__ == "__main__":
    main()
