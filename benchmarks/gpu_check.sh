#!/usr/bin/env bash
# Everything camlens does on a lent GPU, in one call (device time is scarce):
#   1. train the shipped model with `camlens train` (several recipes side by side on one GPU),
#   2. export the better one in fp16, split into two shards (the device returns files <= 16 MiB).
# Run from the repo root on the device machine with the data archive carried in .gpu/:
#   bash benchmarks/gpu_check.sh            (OUT=<folder for results>, default ./gpu-out)
# Join the shards here with: cat OUT/shipped.safetensors.part-* > model.safetensors
set -u
OUT=${OUT:-./gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 CAMLENS_HOME=/tmp/camlens-home
DATA=${DATA:-.gpu/cifar10-jpeg.tar.gz}
BUDGET=${BUDGET:-400}   # seconds each training may run; a run cut short keeps its last epoch
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  nproc
} 2>&1

# decode once (the cache then serves every run)
python3 -c "from camlens.data import load_dataset; d = load_dataset('$DATA', progress=False); print(len(d.train), len(d.test))"

# name: flags. Several recipes share the GPU (one ResNet18 leaves most of it idle).
RUNS=${RUNS:-"a:--epochs 80 --batch-size 256 --lr 0.2|b:--epochs 50 --batch-size 128 --lr 0.1|c:--epochs 80 --batch-size 512 --lr 0.4"}
IFS='|' read -ra specs <<<"$RUNS"
names=()
for spec in "${specs[@]}"; do
  name=${spec%%:*}; flags=${spec#*:}; names+=("$name")
  # shellcheck disable=SC2086
  timeout "$BUDGET" python3 -m camlens train --data "$DATA" --out "runs/$name" $flags \
    --eval-batch-size 1000 --no-progress >"runs-$name.log" 2>&1 &
done
wait
for name in "${names[@]}"; do echo "== run $name"; tail -n 2 "runs-$name.log"; done | tee "$OUT/train.log"

best=$(python3 - <<'PY'
import json
import pathlib

scores = {}
for run in sorted(p.name for p in pathlib.Path("runs").iterdir()):
    try:
        meta = json.load(open(f"runs/{run}/checkpoint.json"))
    except OSError:
        continue
    # a finished schedule beats any unfinished one; then the higher test accuracy
    scores[run] = (meta["epoch"] == meta["epochs"], meta["metrics"]["test_acc"])
print(max(scores, key=scores.get) if scores else "")
PY
)
echo "best run: ${best:-none}"
for name in "${names[@]}"; do
  [ -f "runs/$name/metrics.jsonl" ] && cp "runs/$name/metrics.jsonl" "$OUT/metrics_$name.jsonl"
done
if [ -n "$best" ]; then
  python3 -m camlens export --checkpoint runs/$best/checkpoint.safetensors --out "$OUT/shipped" --dtype fp16
  cp runs/$best/curves.png "$OUT/curves.png"
  for tta in "" --tta; do  # the shipped number, and what test-time flipping adds
    python3 -m camlens evaluate --checkpoint "$OUT/shipped.safetensors" --data "$DATA" \
      --out /tmp/eval $tta --batch-size 500 --no-progress | head -n 1 | sed "s/^/fp16 ${tta:-plain}: /"
  done
  split -n 2 -d "$OUT/shipped.safetensors" "$OUT/shipped.safetensors.part-"
  rm "$OUT/shipped.safetensors"
  sha256sum "$OUT"/shipped.safetensors.part-* 
fi
ls -la "$OUT"
