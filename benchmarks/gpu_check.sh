#!/usr/bin/env bash
# Everything camlens does on a lent GPU, in one call (device time is scarce):
#   1. the CUDA tests (CAM engine on CUDA against the CPU, fp16 autocast), beside the training;
#   2. a probe epoch of every recipe side by side, to size the real runs to the time left;
#   3. several recipes side by side on one GPU (one ResNet18 leaves most of it idle);
#   4. export the best finished run of each group (name prefix before '-') in fp16, in two
#      shards (the device returns files <= 16 MiB), and evaluate it with and without TTA.
# Run from the repo root on the device machine with the data archive carried in .gpu/:
#   bash benchmarks/gpu_check.sh            (OUT=<folder for results>, default ./gpu-out)
# Join the shards here with: cat OUT/<group>.safetensors.part-* > model.safetensors
set -u
OUT=${OUT:-./gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 CAMLENS_HOME=/tmp/camlens-home
DATA=${DATA:-.gpu/cifar10-jpeg.tar.gz}
BUDGET=${BUDGET:-420}   # seconds for probe + runs; a run cut short keeps its last epoch
started=$SECONDS
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  nproc
} 2>&1 | tee "$OUT/device.txt"

# the CUDA tests run beside the training (they take seconds of GPU time)
(python3 -m pytest -q -p no:cacheprovider tests/test_cam.py -k cuda >"$OUT/cuda_tests.log" 2>&1
 echo "rc $?" >>"$OUT/cuda_tests.log") &
tests=$!

# decode once (the cache then serves every run)
python3 -c "from camlens.data import load_dataset; d = load_dataset('$DATA', progress=False); print(len(d.train), len(d.test))"

# name: flags (without --epochs: the probe decides how many fit, at most MAX_EPOCHS)
RUNS=${RUNS:-"bn-a:--batch-size 512 --lr 0.4"}
MAX_EPOCHS=${MAX_EPOCHS:-40}
IFS='|' read -ra specs <<<"$RUNS"
launch() {  # launch EPOCHS SUBSET-FLAG TIMEOUT TAG: every recipe at once, wait for all
  local pids=()
  for spec in "${specs[@]}"; do
    name=${spec%%:*}; flags=${spec#*:}
    # shellcheck disable=SC2086
    timeout "$3" python3 -m camlens train --data "$DATA" --out "runs$4/$name" $flags \
      --epochs "$1" $2 --eval-batch-size 1000 --no-progress >"runs$4-$name.log" 2>&1 &
    pids+=($!)
  done
  wait "${pids[@]}"
}
left=$((BUDGET - (SECONDS - started) - 25))
if [ -z "${EPOCHS:-}" ]; then  # no fixed count: a probe epoch sizes the runs to the time left
  t0=$SECONDS
  PROBE=${PROBE:-10000}   # images in the probe epoch
  launch 1 "--subset $PROBE" 120 -probe
  probe=$((SECONDS - t0))
  left=$((BUDGET - (SECONDS - started) - 25))
  # the probe's time is mostly start-up (~17 s on an H100): a cautious per-epoch cost
  per_epoch=$(python3 -c "print(max(1.0, ($probe - 15) * ${TRAIN_IMAGES:-50000} / $PROBE))")
  EPOCHS=$(python3 -c "print(max(1, min($MAX_EPOCHS, int($left / $per_epoch))))")
  echo "probe: $probe s for $PROBE images of each run side by side; ~$per_epoch s an epoch; $left s left -> $EPOCHS epochs" | tee "$OUT/plan.txt"
fi
launch "$EPOCHS" "" "$left" ""
for spec in "${specs[@]}"; do
  name=${spec%%:*}; echo "== run $name (${spec#*:})"; tail -n 3 "runs-$name.log"
  [ -f "runs/$name/metrics.jsonl" ] && cp "runs/$name/metrics.jsonl" "$OUT/metrics_$name.jsonl"
done 2>&1 | tee "$OUT/train.log"

for group in $(for spec in "${specs[@]}"; do n=${spec%%:*}; echo "${n%%-*}"; done | sort -u); do
  best=$(python3 - "$group" <<'PY'
import json
import pathlib
import sys

scores = {}
for run in pathlib.Path("runs").glob(f"{sys.argv[1]}-*"):
    try:
        meta = json.loads((run / "checkpoint.json").read_text())
    except OSError:
        continue
    # a finished schedule beats any unfinished one; then the higher test accuracy
    scores[run.name] = (meta["epoch"] == meta["epochs"], meta["metrics"]["test_acc"])
print(max(scores, key=scores.get) if scores else "")
PY
)
  echo "best $group run: ${best:-none}" | tee -a "$OUT/train.log"
  [ -n "$best" ] || continue
  python3 -m camlens export --checkpoint "runs/$best/checkpoint.safetensors" --out "$OUT/$group" --dtype fp16
  cp "runs/$best/curves.png" "$OUT/curves_$group.png"
  for tta in "" --tta; do  # the shipped number, and what test-time flipping adds
    python3 -m camlens evaluate --checkpoint "$OUT/$group.safetensors" --data "$DATA" \
      --out /tmp/eval $tta --batch-size 500 --no-progress | sed -n 1p | sed "s/^/$group fp16 ${tta:-plain}: /"
  done 2>&1 | tee -a "$OUT/train.log"
  split -n 2 -d "$OUT/$group.safetensors" "$OUT/$group.safetensors.part-"
  rm "$OUT/$group.safetensors"
  sha256sum "$OUT/$group".safetensors.part-*
done
wait "$tests"; tail -n 5 "$OUT/cuda_tests.log"
# the device returns few files: the small ones travel as one archive
(cd "$OUT" && tar czf small.tar.gz --exclude='*.part-*' --exclude=small.tar.gz ./* && find . -type f ! -name '*.part-*' ! -name small.tar.gz ! -name '*.json' -delete)
ls -la "$OUT"
