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
#   bash benchmarks/cifar100/unit.sh inspect resnet32x4       # only the teacher's precision check
#
# A teacher that finishes in its window is then inspected (`btkd inspect-teacher --compare-bf16`:
# how many of BTKD's split decisions a bf16 and a TF32 forward change against IEEE fp32) when the
# unit's BUDGET leaves a minute for it; `inspect` runs that check alone on a published teacher.
#
# Besides the run's own files, $OUT gets unit.json: the unit's command and, window by window, its
# limit, time taken and outcome (a resumed unit carries the earlier windows' record in RESUME_FROM).
#
# Environment: OUT (required), WORK (the folder the unit runs in, default $HOME: the run folders and
# the staged data are named relative to it, so no machine path enters a committed record), STAGE
# (CIFAR-100 shards, default stage, i.e. $WORK/stage), RUNS (run folders, default runs), BUDGET
# (seconds the whole unit may take, default 540: set it from the device's budget left, less the
# return), LIMIT (minutes of training, default auto: what BUDGET leaves less 90 s),
# BTKD_GIT_COMMIT (the commit the working tree was copied from: the device gets no .git, and btkd
# records this in every meta.json), PYTHON (default python3: on the GPU image it has every
# dependency; btkd runs from src/ through PYTHONPATH).
set -euo pipefail
: "${OUT:?set OUT to the folder whose files come back}"
STARTED=$SECONDS
ARGS=("$@")
REPO=$PWD
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
[ -z "${RESUME_FROM:-}" ] || RESUME_FROM=$(cd "$RESUME_FROM" && pwd)
WORK=${WORK:-$HOME}
STAGE=${STAGE:-stage}
RUNS=${RUNS:-runs}
BUDGET=${BUDGET:-540}
LIMIT=${LIMIT:-auto}
export PYTHONPATH=$REPO/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
BTKD=${BTKD:-$PYTHON -m btkd.cli}
kind=$1 name=$2
shift 2
mkdir -p "$WORK" && cd "$WORK"
# unit.json: this window appended to the unit's record (OUTCOME: finished, paused or inspected)
record() {
  "$PYTHON" - "$OUT/unit.json" "${RESUME_FROM:-}" "$1" "$((SECONDS - STARTED))" "${USED_LIMIT:-0}" "$BUDGET" "${ARGS[@]}" <<'PY'
import json, os, sys
from pathlib import Path

out, resumed, outcome, seconds, limit, budget = sys.argv[1:7]
args = sys.argv[7:]
before = Path(resumed, "unit.json") if resumed else None
unit = json.loads(before.read_text()) if before and before.is_file() else {
    "command": "bash benchmarks/cifar100/unit.sh " + " ".join(args), "windows": []}
unit["windows"].append({"resumed": bool(resumed), "budget_s": int(budget), "limit_min": float(limit), "seconds": int(seconds),
                        "outcome": outcome, "commit": os.environ.get("BTKD_GIT_COMMIT")})
Path(out).write_text(json.dumps(unit, indent=2) + "\n")
PY
}
(cd "$STAGE" && sha256sum -c --quiet SHA256SUMS) || { echo "the staged CIFAR-100 in $STAGE fails its checksums"; exit 1; }
# inspect WEIGHTS: the split decisions a bf16 and a TF32 teacher forward change against IEEE fp32,
# within what is left of BUDGET; its report comes back as inspect_teacher.{json,md}
# (the model and data come from the teacher's own run: its run folder, or its published record)
inspect() {
  local weights=$1 teacher=$2 left=$((BUDGET - (SECONDS - STARTED)))
  shift 2
  if [ "$left" -lt 60 ]; then echo "no time left to inspect the teacher (${left}s of BUDGET)"; return 0; fi
  timeout "$left" $BTKD inspect-teacher "$weights" --compare-bf16 --out "$RUNS/inspect_$teacher" \
    data.root="$STAGE" runtime.progress=false "$@" \
    && cp "$RUNS/inspect_$teacher/teacher.json" "$OUT/inspect_teacher.json" \
    && cp "$RUNS/inspect_$teacher/report.md" "$OUT/inspect_teacher.md" \
    || echo "inspecting the teacher failed or ran out of time; run: unit.sh inspect $teacher"
}
# the training time limit: LIMIT minutes, or what is left of BUDGET less 90 s to save and return
limit() {
  if [ "$LIMIT" = auto ]; then awk -v s=$((BUDGET - 90 - (SECONDS - STARTED))) 'BEGIN { printf "%.2f", (s > 60 ? s : 60) / 60 }'
  else echo "$LIMIT"; fi
}
case $kind in
  teacher) folder=$RUNS/teacher_$name; cmd=train; config=cifar100/teachers/$name ;;
  bench) folder=$RUNS/bench_$name; cmd=bench; config=cifar100/bench/$name ;;
  inspect) mkdir -p "$RUNS"; inspect "weights:$name" "$name" "$@"; record inspected; ls -la "$OUT"; exit 0 ;;
  *) echo "unknown unit kind $kind: teacher, bench or inspect"; exit 2 ;;
esac
mkdir -p "$RUNS"
if [ -n "${RESUME_FROM:-}" ]; then
  ls "$RESUME_FROM"/checkpoint.part.* >/dev/null 2>&1 || { echo "no checkpoint.part.* in $RESUME_FROM"; exit 2; }
  mkdir -p "$folder"
  cat "$RESUME_FROM"/checkpoint.part.* > "$folder/checkpoint.pt"
  if [ "$kind" = bench ]; then tar -xf "$RESUME_FROM/members.tar" -C "$folder"
  else cp "$RESUME_FROM"/{config.yaml,meta.json,log.jsonl} "$folder/"; fi
  USED_LIMIT=$(limit)
  $BTKD $cmd --resume "$folder" data.root="$STAGE" runtime.time_limit="$USED_LIMIT" "$@"
else
  if [ "$kind" = bench ]; then
    # The split decides on the teacher's argmax: keep it on IEEE fp32 logits unless the teacher's
    # precision check found that a bf16 forward changes no decision; a published teacher without a
    # check is checked first (a minute), and the check comes back with the bench (later overrides win).
    choice=$("$PYTHON" "$REPO/benchmarks/cifar100/teacher_precision.py" "$config" "$@")
    if [ "${choice%% *}" = inspect ]; then
      teacher=${choice#inspect }
      inspect "weights:$teacher" "$teacher"
      rm -f "$OUT/inspect_teacher.md"  # its JSON holds every figure; a paused bench needs the file slots
      choice=$("$PYTHON" "$REPO/benchmarks/cifar100/teacher_precision.py" "$config" --check "$OUT/inspect_teacher.json" "$@")
    fi
    set -- "runtime.teacher_precision=$choice" "$@"
  fi
  # name= pins the folder, whatever the overrides (a derived run name would move it)
  USED_LIMIT=$(limit)
  $BTKD $cmd $config data.root="$STAGE" output_dir="$RUNS" name="$(basename "$folder")" \
    runtime.time_limit="$USED_LIMIT" "$@"
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
  if [ "$kind" = teacher ]; then
    cp "$folder/summary.json" "$OUT/"
    "$PYTHON" - "$folder/last.safetensors" "$OUT/teacher_$name.safetensors" <<'PY'
import sys
from safetensors.torch import load_file, save_file
state = load_file(sys.argv[1])  # half precision: under 16 MiB for resnet32x4
save_file({k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}, sys.argv[2])
PY
    inspect "$folder/last.safetensors" "$name" "$@"
  fi
  record finished
  echo "unit finished"
else
  split -b 15M -d "$folder/checkpoint.pt" "$OUT/checkpoint.part."
  record paused
  echo "unit paused: its checkpoint is in $OUT/checkpoint.part.*; continue it with RESUME_FROM"
fi
ls -la "$OUT"
