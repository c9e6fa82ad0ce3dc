#!/usr/bin/env bash
# camlens's GPU checks as ONE call of a lent GPU machine, sized to the call's limits:
#   sent:  under 64 MiB: the tree (tracked and untracked-not-ignored files) without the second
#          shipped model, which --prepare stashes in .gpu/stash for the call, plus the carried
#          .gpu/carry: a CIFAR-10 JPEG subset re-packed (refused over CARRY_CAP bytes);
#   back:  at most 8 files under $OUT, each cut at 8 MB: steps.log and one log per step, each
#          written while its step runs, so what ran comes back even if the call is cut;
#   time:  at most 540 s of commands: each step has its own budget, enforced by timeout.
# Steps (budget in s):
#   setup        30  device, torch, TF32 flags; the data subset decoded once (into steps.log)
#   cuda_tests   90  the CUDA tests: CAMLENS_TEST_CUDA=1 pytest -k cuda (test_cam, test_device)
#   cuda_parity  60  every method and metric on CUDA against the CPU, TF32 as the CLI leaves
#                    it (PyTorch's defaults; camlens turns it off inside its calls)
#   ddp_gloo     90  two gloo ranks sharing cuda:0 (one GPU cannot hold two NCCL ranks): DDP,
#                    SyncBatchNorm, channels-last and bf16 autocast, one epoch of the subset
#   run         150  `camlens run` on the subset, every output line stamped with its second:
#                    the time of each stage (train, evaluate, explain, report)
#   cam_bf16     90  Grad-CAM throughput at batch 256, fp32 vs bf16, the bf16 maps' agreement
#
# Here, on the CPU (from the repo root):
#   bash benchmarks/gpu_session.sh --prepare [ARCHIVE]   the carry (from the CIFAR-10 JPEG
#        .tar.gz, default .gpu/cifar10-jpeg.tar.gz) and the second model stashed
#   bash benchmarks/gpu_session.sh --dry       the exact command, the carry, the bytes that
#        would travel, the files that come back; exits 1 if a limit is broken
#   then one device call: command and carry as --dry prints them, timeout_s 600; and after it
#   bash benchmarks/gpu_session.sh --restore   the second model back in the tree
# There, the command --dry prints:  bash benchmarks/gpu_session.sh --run
# A rehearsal here runs the same steps on the CPU (the CUDA ones say "skipped"):
#   OUT=/tmp/gpu-out bash benchmarks/gpu_session.sh --run
set -u
cd "$(dirname "$0")/.."

LEFT_OUT=src/camlens/assets/resnet18-layernorm-cifar10-jpeg.safetensors  # not used on the GPU
STASH=.gpu/stash
CARRY=.gpu/carry
SUBSET_FILE=$CARRY/cifar10-jpeg-subset.tar.gz
TRAIN_PER_CLASS=1000  # 10,000 training images
TEST_PER_CLASS=100    # 1,000 test images
CARRY_CAP=8388608     # 8 MiB: --prepare refuses a bigger carry, --dry counts the cap until built
SEND_LIMIT=67108864   # 64 MiB sent in a call
FILES_LIMIT=8         # files back
FILE_CAP=8000000      # bytes a log keeps: under the 16 MiB a file may bring back
TIME_LIMIT=540        # seconds of commands
COMMAND="bash benchmarks/gpu_session.sh --run"
STEPS="setup:30 cuda_tests:90 cuda_parity:60 ddp_gloo:90 run:150 cam_bf16:90"

budget() {  # the steps' budgets added up
  local total=0 s
  for s in $STEPS; do total=$((total + ${s#*:})); done
  echo "$total"
}

returned() {  # the files the call brings back: steps.log and a log per step but setup's
  echo steps.log
  local s
  for s in $STEPS; do [ "${s%%:*}" = setup ] || echo "${s%%:*}.log"; done
}

prepare() {
  local archive=${1:-.gpu/cifar10-jpeg.tar.gz}
  [ -f "$archive" ] || { echo "no archive $archive: pass the CIFAR-10 JPEG .tar.gz" >&2; exit 2; }
  mkdir -p "$CARRY" "$STASH"
  python3 - "$archive" "$SUBSET_FILE" "$TRAIN_PER_CLASS" "$TEST_PER_CLASS" <<'PY' || exit 1
import collections, sys, tarfile

source, target, per = sys.argv[1], sys.argv[2], {"train": int(sys.argv[3]), "test": int(sys.argv[4])}
kept = collections.Counter()
with tarfile.open(source) as src, tarfile.open(target, "w:gz") as out:
    for member in src:  # ROOT/split/class/NNNN.jpg, in archive order: the first of each class
        parts = member.name.split("/")
        if member.isfile() and len(parts) == 4 and parts[1] in per:
            if kept[parts[1], parts[2]] < per[parts[1]]:
                kept[parts[1], parts[2]] += 1
                out.addfile(member, src.extractfile(member))
print(f"{target}: {sum(kept.values())} images")
PY
  local size
  size=$(stat -c %s "$SUBSET_FILE")
  if [ "$size" -gt "$CARRY_CAP" ]; then
    echo "the subset is $size bytes, over the carry's cap of $CARRY_CAP" >&2; exit 1
  fi
  [ -f "$LEFT_OUT" ] && mv "$LEFT_OUT" "$STASH/"
  echo "prepared: $SUBSET_FILE ($size bytes); $LEFT_OUT stashed in $STASH until --restore"
}

restore() {
  local name
  name=$(basename "$LEFT_OUT")
  [ -f "$STASH/$name" ] && mv "$STASH/$name" "$LEFT_OUT"
  git diff --quiet -- "$LEFT_OUT" && echo "restored: $LEFT_OUT"
}

dry() {
  local tree carry files=0 broken=0 name
  # what travels: tracked and untracked-not-ignored files present, shared/ where there is one,
  # the second model counted out (stashed for the call), and the carry
  tree=$(git ls-files -z --cached --others --exclude-standard | grep -zv "^$LEFT_OUT\$" |
    xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
  [ -d shared ] && tree=$((tree + $(du -sb shared | cut -f1)))
  if [ -f "$SUBSET_FILE" ]; then
    carry=$(du -sb "$CARRY" | cut -f1); name="built"
  else
    carry=$CARRY_CAP; name="not built yet: its cap, --prepare refuses more"
  fi
  echo "command ($(printf %s "$COMMAND" | wc -c) characters, at most 2000): $COMMAND"
  echo "carry: $CARRY ($carry bytes, $name)"
  echo "sent: $((tree + carry)) bytes, $(awk "BEGIN {printf \"%.1f\", $((tree + carry)) / 1048576}")" \
    "MiB (the tree $tree without $LEFT_OUT, and the carry; limit $SEND_LIMIT bytes)"
  echo "time: $(budget) s of commands (limit $TIME_LIMIT): $STEPS"
  echo "files back, each cut at $FILE_CAP bytes:"
  for name in $(returned); do echo "  \$OUT/$name"; files=$((files + 1)); done
  echo "files: $files (limit $FILES_LIMIT)"
  [ "$((tree + carry))" -lt "$SEND_LIMIT" ] || { echo "BROKEN: too much sent"; broken=1; }
  [ "$(budget)" -le "$TIME_LIMIT" ] || { echo "BROKEN: over the time budget"; broken=1; }
  [ "$files" -le "$FILES_LIMIT" ] || { echo "BROKEN: too many files back"; broken=1; }
  [ "${#COMMAND}" -le 2000 ] || { echo "BROKEN: the command is too long"; broken=1; }
  return "$broken"
}

limit_of() {  # limit_of NAME: the step's budget
  local s
  for s in $STEPS; do [ "${s%%:*}" = "$1" ] && echo "${s#*:}"; done
}

step() {  # step NAME SKIP_REASON COMMAND...: run it under its budget; log, verdict, time
  local name=$1 skip=$2 limit rc t0=$SECONDS verdict
  shift 2
  limit=$(limit_of "$name")
  if [ -n "$skip" ]; then
    echo "[$(date +%T)] $name: skipped ($skip)" >>"$OUT/steps.log"
    return
  fi
  timeout "$limit" "$@" 2>&1 | stamp | head -c "$FILE_CAP" >"$OUT/$name.log"
  rc=${PIPESTATUS[0]}
  verdict="ran"
  [ "$rc" = 0 ] || verdict="failed (rc $rc)"
  [ "$rc" = 124 ] && verdict="cut at its budget of $limit s"
  echo "[$(date +%T)] $name: $verdict in $((SECONDS - t0)) s of $limit" >>"$OUT/steps.log"
}

stamp() {  # each line with the seconds since its step began: the time of each stage
  local start=${EPOCHREALTIME/[.,]/} now line
  while IFS= read -r line; do
    now=$(( ${EPOCHREALTIME/[.,]/} - start ))  # microseconds
    printf '%5d.%d %s\n' "$((now / 1000000))" "$((now / 100000 % 10))" "$line"
  done
}

run() {
  OUT=${OUT:-./gpu-out}
  mkdir -p "$OUT"
  : >"$OUT/steps.log"
  export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 CAMLENS_HOME=${CAMLENS_HOME:-/tmp/camlens-home}
  CUDA=$(python3 -c "import torch; print(int(torch.cuda.is_available()))")
  local data=$SUBSET_FILE device=cpu gpu="" train=""
  [ "$CUDA" = 1 ] && device=cuda
  [ "$CUDA" = 1 ] || gpu="no CUDA device"
  if [ ! -f "$data" ]; then  # a rehearsal without the carry: the bundled sample, no training
    data=sample
    train="the sample has no training images: --prepare builds the carry"
  fi
  {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
    python3 -c "import torch; b = torch.backends
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())
print('TF32 defaults: matmul', b.cuda.matmul.allow_tf32, 'cudnn', b.cudnn.allow_tf32)"
    echo "cores $(nproc); $(date -u); data $data"
    git log --oneline -1 2>/dev/null
    timeout "$(limit_of setup)" python3 -c "from camlens.data import load_dataset
d = load_dataset('$data', progress=False); print('decoded', len(d.train), len(d.test))"
  } >>"$OUT/steps.log" 2>&1
  step cuda_tests "$gpu" env CAMLENS_TEST_CUDA=1 python3 -m pytest -q -rs -p no:cacheprovider \
    -k cuda tests/test_cam.py tests/test_device.py
  step cuda_parity "$gpu" python3 benchmarks/cuda_parity.py --data "$data"
  step ddp_gloo "${gpu:-$train}" torchrun --standalone --nproc-per-node 2 -m camlens train --data "$data" \
    --out /tmp/gpu-ddp --epochs 1 --subset 4096 --batch-size 256 --backend gloo \
    --device cuda:0 --sync-bn --precision bf16 --no-progress
  step run "$train" python3 -m camlens run --data "$data" --out /tmp/gpu-run --epochs 1 \
    --subset 4096 --limit 64 --device "$device" --no-progress
  step cam_bf16 "" python3 benchmarks/cam_bf16.py --device "$device" --data "$data" \
    --batch 256 --images 1000
  cat "$OUT/steps.log"
}

case "${1:-}" in
  --prepare) shift; prepare "$@" ;;
  --restore) restore ;;
  --dry) dry ;;
  --run) run ;;
  *) sed -n '2,32p' "$0"; exit 2 ;;
esac
