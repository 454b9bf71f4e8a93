#!/usr/bin/env bash
# Rehearse GPU windows on the CPU with a tiny slice of the real data and the real models: every call
# that stage.sh prints is run here as the device runs it (in the repository root, $HOME a fresh
# scratch folder), units pause and resume through what they return, and land.py files them into
# scratch folders, whose published teachers count towards the tree's size as committed ones would.
# It fails when a return breaks the device's limits (8 files, 16 MiB each) or a call would not fit.
#
#   bash benchmarks/cifar100/rehearse.sh [TEACHER] [BENCH]      # default: resnet32x4 res32x4_res8x4
#
# Environment: SHARDS (CIFAR-100, default ../shared/data/cifar100), PYTHON (default .venv/bin/python).
set -euo pipefail
TEACHER=${1:-resnet32x4}
BENCH=${2:-res32x4_res8x4}
SHARDS=$(cd "${SHARDS:-../shared/data/cifar100}" && pwd)
PYTHON=$(cd "$(dirname "${PYTHON:-.venv/bin/python}")" && pwd)/$(basename "${PYTHON:-.venv/bin/python}")
REPO=$PWD
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH" .data/piece.*' EXIT  # its pieces are not for a real window
TINY=(data.train_subset=256 data.test_subset=128 optim.epochs=3 optim.milestones=[2] runtime.progress=false)

check_return() {  # the device returns at most 8 files of at most 16 MiB
  local n big
  n=$(find "$1" -type f | wc -l)
  big=$(find "$1" -type f -size +16M | wc -l)
  echo "  returned: $n files, largest $(du -b "$1"/* | sort -n | tail -1 | awk '{printf "%.1f MiB", $1 / 1048576}')"
  [ "$n" -le 8 ] && [ "$big" -eq 0 ] || { echo "  over the device's limits: $n files, $big over 16 MiB"; exit 1; }
}

# window RETURNED_OR_EMPTY OUT UNIT...: one window's calls, exactly as stage.sh prints them, each run
# in the repository root with $HOME a fresh scratch folder (the device's), OUT its return folder
window() {
  local returned=$1 out=$2
  shift 2
  local home=$SCRATCH/home_$(basename "$out")
  mkdir -p "$home" "$out"
  UNIT="$*" TREE_EXTRA=$(find "$SCRATCH/weights" -name "*.safetensors" -printf "%s\n" 2>/dev/null | awk "{s += \$1} END {print s + 0}") \
    bash benchmarks/cifar100/stage.sh ${returned:+"$returned"} > "$out.calls"
  grep "^working tree" "$out.calls" | sed 's/^/  /'
  local calls
  calls=$(grep '^  \["' "$out.calls" | sed 's/^  \["[^"]*"\]  //')
  [ -n "$calls" ] || { cat "$out.calls"; exit 1; }
  while IFS= read -r cmd; do
    (export HOME=$home OUT=$out PYTHON LIMIT=${WINDOW_LIMIT:-5}; eval "$cmd") > "$out.log" 2>&1 \
      || { tail -20 "$out.log"; exit 1; }
  done <<< "$calls"
  grep -E "unit (finished|paused)|teacher precision" "$out.log" | sed 's/^/  /'
  check_return "$out"
}

echo "teacher $TEACHER: window 1 (pauses at once)"
WINDOW_LIMIT=0.0001 window "" "$SCRATCH/t1" teacher "$TEACHER" "${TINY[@]}"
echo "teacher $TEACHER: window 2 (resumes, finishes, checks its precision)"
window "$SCRATCH/t1" "$SCRATCH/t2" teacher "$TEACHER"
"$PYTHON" benchmarks/cifar100/land.py "$SCRATCH/t2" --weights "$SCRATCH/weights" --results "$SCRATCH/results" --paused "$SCRATCH/paused" | grep -v "^table"
# a published teacher without its check: the bench checks it first
rm -f "$SCRATCH"/weights/"$TEACHER"/inspect_teacher.*
export BTKD_WEIGHTS=$SCRATCH/weights
echo "bench $BENCH: window 1 (checks the teacher's precision, pauses at once)"
WINDOW_LIMIT=0.0001 window "" "$SCRATCH/b1" bench "$BENCH" model.teacher_checkpoint=weights:"$TEACHER" \
  bench.seeds=[0] "${TINY[@]}"
echo "bench $BENCH: window 2 (resumes, finishes)"
window "$SCRATCH/b1" "$SCRATCH/b2" bench "$BENCH"
"$PYTHON" benchmarks/cifar100/land.py "$SCRATCH/b2" --weights "$SCRATCH/weights" --results "$SCRATCH/results" --paused "$SCRATCH/paused" | grep -v "^table"
grep -A3 "^| teacher" "$SCRATCH/results/README.md" | head -3 | tail -1
echo "rehearsal passed"
cd "$REPO"
