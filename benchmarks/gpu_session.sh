#!/usr/bin/env bash
# Everything camlens checks GPU-side, in one call of a lent GPU machine (device time is scarce):
#   1. the whole test suite with the GPU visible (CUDA-only tests included), with -rs so the log
#      lists every skip and its reason; beside it, every CAM method and metric on CUDA against
#      the CPU (benchmarks/cuda_parity.py, tolerance stated there);
#   2. torchrun --nproc-per-node 1 with the NCCL backend and --sync-bn (a short training);
#   3. the trust table at full size: `camlens compare` on the shipped model, every method at
#      layer3 and layer4, LIMIT mistakes and as many correct images (files in OUT/compare);
#   4. `camlens report` on CUDA (explain every mistake, gallery, report) and `camlens run` end
#      to end, timed; CAM throughput at batch 256 in fp32 and bf16 with the bf16 maps' agreement
#      (cam_speed.py) and the metrics' cost against a forward (metric_speed.py);
#   5. with the time left (TRAIN=1), the recipes of benchmarks/gpu_check.sh towards the shipped
#      models' goals.
# Each step has its own time limit and says "ran", "skipped (why)" or "failed (rc)" in
# OUT/steps.log; the script never stops at a failed step. STEPS=compare,report (names as in
# steps.log) runs only those, to split the work over two calls of the 600-s limit; SUITE=0
# leaves the test suite out. Device time is 15 min a session, start-up included: the full
# trust table (LIMIT=512, every method, ROAD and SS-CAM/IS-CAM the costly parts) may need a
# call of its own.
#
# On the device, from the repo root, with the data archive carried in .gpu/:
#   bash benchmarks/gpu_session.sh                      (OUT: results folder, default ./gpu-out)
# Rehearsal on a CPU machine (tiny sizes, the bundled sample, the CUDA parts skipped):
#   DRY=1 bash benchmarks/gpu_session.sh          (SUITE=0 leaves the test suite out)
set -u
OUT=${OUT:-./gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 CAMLENS_HOME=${CAMLENS_HOME:-/tmp/camlens-home}
DRY=${DRY:-0}
if [ "$DRY" = 1 ]; then
  DATA=${DATA:-sample}; LIMIT=${LIMIT:-2}; METHODS=${METHODS:-gradcam}
  SUBSET=${SUBSET:-200}; RUN_EPOCHS=1; CAM_FLAGS="--quick"; METRIC_FLAGS="--quick"
  # the bundled sample has no training split: the rehearsal trains on it written as a folder
  RUN_DATA=/tmp/camlens-dry-data
  python3 - "$RUN_DATA" <<'PY'
import sys
from pathlib import Path

from PIL import Image

from camlens.data import load_dataset

test = load_dataset("sample", progress=False)
for i, (image, label) in enumerate(zip(test.test.images, test.test.labels, strict=True)):
    split = "train" if i % 5 else "test"
    folder = Path(sys.argv[1]) / split / test.classes[int(label)]
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
PY
else
  DATA=${DATA:-.gpu/cifar10-jpeg.tar.gz}; LIMIT=${LIMIT:-512}; METHODS=${METHODS:-all}
  SUBSET=${SUBSET:-10000}; RUN_EPOCHS=${RUN_EPOCHS:-2}; CAM_FLAGS="--batch 256"; METRIC_FLAGS=""
  RUN_DATA=$DATA
fi
CUDA=$(python3 -c "import torch; print(int(torch.cuda.is_available()))")
DEVICE=cpu; [ "$CUDA" = 1 ] && DEVICE=cuda
[ "$METHODS" = all ] && METHODS=$(python3 -c "from camlens.choices import METHOD_NAMES as m; print(','.join(m))")

step() {  # step NAME SECONDS NEEDS_CUDA(0|1) COMMAND...: run, time and record one step
  local name=$1 limit=$2 needs=$3; shift 3
  if [ -n "${STEPS:-}" ] && [[ ",$STEPS," != *",$name,"* ]]; then
    echo "[$(date +%T)] $name: skipped (not in STEPS=$STEPS)" | tee -a "$OUT/steps.log"; return
  fi
  if [ "$needs" = 1 ] && [ "$CUDA" != 1 ]; then
    echo "[$(date +%T)] $name: skipped (no CUDA device)" | tee -a "$OUT/steps.log"; return
  fi
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  local verdict="ran"; [ "$rc" = 0 ] || verdict="failed (rc $rc)"
  [ "$rc" = 124 ] && verdict="cut at its limit of $limit s"
  echo "[$(date +%T)] $name: $verdict in $((SECONDS - t0)) s" | tee -a "$OUT/steps.log"
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
  echo "cores $(nproc); $(date -u)"; git log --oneline -1
} 2>&1 | tee "$OUT/device.txt"
# decode once: the cache then serves every step
python3 -c "from camlens.data import load_dataset; d = load_dataset('$DATA', progress=False); print(len(d.train), len(d.test))"

# 1. the suite beside the other steps (it takes minutes of CPU, seconds of GPU)
if [ "${SUITE:-1}" = 1 ]; then
  (timeout 420 python3 -m pytest -q -rs -p no:cacheprovider >"$OUT/suite.log" 2>&1
   echo "rc $?" >>"$OUT/suite.log") &
else
  echo "suite skipped (SUITE=0)" >"$OUT/suite.log"; true &
fi
suite=$!
step cuda_parity 120 0 python3 benchmarks/cuda_parity.py --data "$DATA"

# 2. torchrun, one process, NCCL, synchronised batch norm
step torchrun_nccl 120 1 torchrun --nproc-per-node 1 -m camlens train --data "$RUN_DATA" \
  --out /tmp/gpu-ddp --epochs 1 --subset "$SUBSET" --backend nccl --sync-bn --device cuda --no-progress

# 3. the trust table
step compare 300 0 python3 -m camlens compare --model shipped --data "$DATA" --out "$OUT/compare" \
  --method "$METHODS" --layer layer3,layer4 --limit "$LIMIT" --device "$DEVICE" --no-progress

# 4. end to end and the figures
step report 120 0 python3 -m camlens report --model shipped --data "$DATA" --out /tmp/gpu-report \
  --device "$DEVICE" --no-progress
step run_end_to_end 180 0 python3 -m camlens run --data "$RUN_DATA" --out /tmp/gpu-run \
  --epochs "$RUN_EPOCHS" --device "$DEVICE" --no-progress
step cam_speed 120 0 python3 benchmarks/cam_speed.py --device "$DEVICE" --checkpoint shipped \
  --data "$DATA" $CAM_FLAGS
step metric_speed 90 0 python3 benchmarks/metric_speed.py --device "$DEVICE" $METRIC_FLAGS

# 5. the shipped models' goals, with what is left (gpu_check.sh sizes its runs to BUDGET)
if [ "${TRAIN:-0}" = 1 ]; then
  step train 420 1 env OUT="$OUT/train" DATA="$DATA" bash benchmarks/gpu_check.sh
else
  echo "[$(date +%T)] train: skipped (TRAIN=1 runs it)" | tee -a "$OUT/steps.log"
fi

wait "$suite"
tail -n 40 "$OUT/suite.log" | grep -E "passed|failed|SKIPPED|rc " | tee -a "$OUT/steps.log"
# the device returns files <= 16 MiB: the compare files and logs travel as they are
ls -la "$OUT" "$OUT/compare" 2>/dev/null
