#!/usr/bin/env bash
# One unit of the CIFAR-100 evidence, run on the GPU machine after CIFAR-100 was staged there
# (benchmarks/cifar100/README.md gives the calls). It trains at most LIMIT minutes, pausing at an
# epoch end when the next epoch would not fit, and leaves in $OUT what the next window or the commit
# needs: the run's config, meta and per-epoch log, and either the finished weights or the paused
# checkpoint in parts of 15 MiB (the device returns files of at most 16 MiB).
#
#   bash benchmarks/cifar100/unit.sh teacher resnet32x4 [key=value ...]       # unit 1: a teacher
#   bash benchmarks/cifar100/unit.sh bench res32x4_res8x4 [key=value ...]     # unit 2: a bench
#   RESUME_FROM=.data/ckpt bash benchmarks/cifar100/unit.sh teacher resnet32x4 # continue a paused one
#
# Environment: STAGE (CIFAR-100 shards, default $HOME/stage), OUT (required), LIMIT (minutes, default
# 7), RUNS (run folders, default $HOME/runs), PYTHON (default python3: on the GPU image it has every
# dependency; btkd runs from src/ through PYTHONPATH).
set -euo pipefail
: "${OUT:?set OUT to the folder whose files come back}"
STAGE=${STAGE:-$HOME/stage}
LIMIT=${LIMIT:-7}
RUNS=${RUNS:-$HOME/runs}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
BTKD=${BTKD:-$PYTHON -m btkd.cli}
kind=$1 name=$2
shift 2
(cd "$STAGE" && sha256sum -c --quiet SHA256SUMS) || { echo "the staged CIFAR-100 in $STAGE fails its checksums"; exit 1; }
case $kind in
  teacher) folder=$RUNS/teacher_$name; cmd=train; config=cifar100/teachers/$name ;;
  bench) folder=$RUNS/bench_$name; cmd=bench; config=cifar100/bench/$name ;;
  *) echo "unknown unit kind $kind: teacher or bench"; exit 2 ;;
esac
mkdir -p "$RUNS" "$OUT"
if [ -n "${RESUME_FROM:-}" ]; then
  ls "$RESUME_FROM"/checkpoint.part.* >/dev/null 2>&1 || { echo "no checkpoint.part.* in $RESUME_FROM"; exit 2; }
  mkdir -p "$folder"
  cat "$RESUME_FROM"/checkpoint.part.* > "$folder/checkpoint.pt"
  if [ "$kind" = bench ]; then tar -xf "$RESUME_FROM/members.tar" -C "$folder"
  else cp "$RESUME_FROM"/{config.yaml,meta.json,log.jsonl} "$folder/"; fi
  $BTKD $cmd --resume "$folder" data.root="$STAGE" runtime.time_limit="$LIMIT" "$@"
else
  # name= pins the folder, whatever the overrides (a derived run name would move it)
  $BTKD $cmd $config data.root="$STAGE" output_dir="$RUNS" name="$(basename "$folder")" \
    runtime.time_limit="$LIMIT" "$@"
fi
# What comes back (at most 8 files, 16 MiB each): the run's record, then either the finished result
# or the paused checkpoint in 15 MiB parts (bring them back with RESUME_FROM in the next window).
if [ "$kind" = teacher ]; then
  cp "$folder"/{config.yaml,meta.json,log.jsonl} "$OUT/"
  done_file=$folder/summary.json
else
  (cd "$folder" && tar -cf "$OUT/members.tar" bench.yaml results.json results.md \
     $(find runs -name config.yaml -o -name meta.json -o -name log.jsonl -o -name summary.json))
  done_file=$folder/runs/.complete
  "$PYTHON" -c "import json,sys; sys.exit(0 if json.load(open('$folder/results.json'))['complete'] else 1)" \
    && touch "$done_file" || true
fi
if [ -f "$done_file" ]; then
  [ "$kind" = teacher ] && cp "$folder/summary.json" "$OUT/" && "$PYTHON" - "$folder/last.safetensors" \
    "$OUT/teacher_$name.safetensors" <<'PY'
import sys
from safetensors.torch import load_file, save_file
state = load_file(sys.argv[1])  # half precision: under 16 MiB for resnet32x4
save_file({k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}, sys.argv[2])
PY
  echo "unit finished"
else
  split -b 15M -d "$folder/checkpoint.pt" "$OUT/checkpoint.part."
  echo "unit paused: its checkpoint is in $OUT/checkpoint.part.*; continue it with RESUME_FROM"
fi
ls -la "$OUT"
