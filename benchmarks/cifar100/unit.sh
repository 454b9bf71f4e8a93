#!/usr/bin/env bash
# One unit of the CIFAR-100 evidence, run on the GPU machine after CIFAR-100 was staged there
# (benchmarks/cifar100/README.md gives the calls). It trains within BUDGET seconds, pausing at an
# epoch end when the next epoch would not fit, and leaves in $OUT what the next window or the commit
# needs (the device returns at most 8 files of 16 MiB):
#   unit.json     the unit's command and, window by window, its budget, limit, time taken, outcome
#                 and commit (a resumed unit carries the earlier windows' record in RESUME_FROM);
#   record.tar    the run's small files: a teacher's config.yaml, meta.json, log.jsonl (summary.json
#                 and the precision check inspect_teacher.{json,md} once finished), or a bench's
#                 bench.yaml, results and every member's config, meta, log and summary;
#   and either    checkpoint.part.NN (a paused unit's checkpoint in 15 MiB parts; its sha256 is in
#                 unit.json and checked on resume), or a finished teacher's half-precision weights
#                 teacher_<name>.safetensors (in 15 MiB shards when larger: vgg13);
#   and, from a finished unit's spare time on a GPU, gpu_bench.json (the teacher-precision cost),
#                 gpu_smoke.txt and strong_view_gpu.json;
#   and, when the fast path failed and the window trained again without it (FALLBACK, below),
#                 fast_path_failure.txt (each failed attempt's output), or when the GPU preflight
#                 failed and the window trained without it from the start (PREFLIGHT), the check's output.
#
#   bash benchmarks/cifar100/unit.sh teacher resnet32x4 [key=value ...]       # a teacher
#   bash benchmarks/cifar100/unit.sh bench res32x4_res8x4 [key=value ...]     # a bench
#   RESUME_FROM=$HOME/stage/ckpt bash benchmarks/cifar100/unit.sh teacher resnet32x4   # continue a paused one
#   bash benchmarks/cifar100/unit.sh inspect resnet32x4       # only a published teacher's precision check
#
# A teacher that finishes in its window is then inspected (`btkd inspect-teacher --compare-bf16`:
# how many of BTKD's split decisions a bf16 and a TF32 forward change against IEEE fp32) when
# BUDGET leaves a minute for it. A bench decides its teacher's precision from that check
# (teacher_precision.py), running it first when a published teacher has none.
#
# Environment: OUT (required), WORK (the folder the unit runs in, default $HOME: the run folders and
# the staged data are named relative to it, so no machine path enters a committed record), STAGE
# (CIFAR-100 shards, default stage, i.e. $WORK/stage), RUNS (run folders, default runs), BUDGET
# (seconds the whole unit may take, default 540: set it from the device's budget left, less the
# return), LIMIT (minutes of training, default auto: what BUDGET leaves less 90 s),
# BTKD_GIT_COMMIT (the commit the working tree was copied from: the device gets no .git, and btkd
# records this in every meta.json), PYTHON (default python3: on the GPU image it has every
# dependency; btkd runs from src/ through PYTHONPATH), FALLBACK (auto: on a CUDA machine, a run that
# fails before its first epoch end in the window trains again without compile, then without the CUDA
# graph; on: also elsewhere; off: never), PREFLIGHT (auto: on a CUDA machine, benchmarks/gpu_preflight.py
# first, seconds, and a window whose CUDA graph trains otherwise than the eager step trains without
# compile and the graph; on, off), BTKD (the btkd command, default $PYTHON -m btkd.cli).
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
# unit.json: this window appended to the unit's record (OUTCOME: finished, paused or inspected;
# CHECKPOINT: a paused unit's checkpoint file, whose sha256 the resume checks)
record() {
  "$PYTHON" - "$OUT/unit.json" "${RESUME_FROM:-}" "$1" "$((SECONDS - STARTED))" "${USED_LIMIT:-0}" "$BUDGET" \
    "${2:-}" "${ARGS[@]}" <<'PY'
import json, os, sys
from pathlib import Path

from btkd.weights import file_sha256

out, resumed, outcome, seconds, limit, budget, checkpoint = sys.argv[1:8]
args = sys.argv[8:]
before = Path(resumed, "unit.json") if resumed else None
unit = json.loads(before.read_text()) if before and before.is_file() else {
    "command": "bash benchmarks/cifar100/unit.sh " + " ".join(args), "windows": []}
parts = len(list(Path(out).parent.glob("checkpoint.part.*")))
unit["windows"].append({"resumed": bool(resumed), "budget_s": int(budget), "limit_min": float(limit),
                        "seconds": int(seconds), "outcome": outcome, "commit": os.environ.get("BTKD_GIT_COMMIT"),
                        **({"fallback": os.environ["FALLBACK_USED"]} if os.environ.get("FALLBACK_USED") else {}),
                        **({"checkpoint_sha256": file_sha256(checkpoint), "parts": parts} if checkpoint else {})})
Path(out).write_text(json.dumps(unit, indent=2) + "\n")
PY
}
(cd "$STAGE" && sha256sum -c --quiet SHA256SUMS) || { echo "the staged CIFAR-100 in $STAGE fails its checksums"; exit 1; }
# inspect WEIGHTS TEACHER DEST [key=value ...]: the split decisions a bf16 and a TF32 teacher forward
# change against IEEE fp32 (the model and data come from the teacher's own run: its run folder, or
# its published record), within what is left of BUDGET, into DEST/inspect_teacher.{json,md}
inspect() {
  local weights=$1 teacher=$2 dest=$3 left=$((BUDGET - (SECONDS - STARTED)))
  shift 3
  if [ "$left" -lt 60 ]; then echo "no time left to inspect the teacher (${left}s of BUDGET)"; return 0; fi
  if timeout "$left" $BTKD inspect-teacher "$weights" --compare-bf16 --out "$RUNS/inspect_$teacher" \
      data.root="$STAGE" runtime.progress=false "$@"; then
    cp "$RUNS/inspect_$teacher/teacher.json" "$dest/inspect_teacher.json"
    cp "$RUNS/inspect_$teacher/report.md" "$dest/inspect_teacher.md"
  else
    echo "inspecting the teacher failed or ran out of time; run: unit.sh inspect $teacher"
  fi
}
# the training time limit: LIMIT minutes, or what is left of BUDGET less 90 s to save and return
limit() {
  if [ "$LIMIT" = auto ]; then awk -v s=$((BUDGET - 90 - (SECONDS - STARTED))) 'BEGIN { printf "%.2f", (s > 60 ? s : 60) / 60 }'
  else echo "$LIMIT"; fi
}
case $kind in
  teacher) folder=$RUNS/teacher_$name; cmd=train; config=cifar100/teachers/$name ;;
  bench) folder=$RUNS/bench_$name; cmd=bench; config=cifar100/bench/$name ;;
  inspect)
    mkdir -p "$RUNS"
    inspect "weights:$name" "$name" "$OUT" "$@"
    (cd "$OUT" && [ -f inspect_teacher.json ] && tar -cf record.tar inspect_teacher.json inspect_teacher.md \
      && rm inspect_teacher.json inspect_teacher.md) || true
    record inspected; ls -la "$OUT"; exit 0 ;;
  *) echo "unknown unit kind $kind: teacher, bench or inspect"; exit 2 ;;
esac
mkdir -p "$RUNS"
if [ -n "${RESUME_FROM:-}" ]; then
  ls "$RESUME_FROM"/checkpoint.part.* >/dev/null 2>&1 || { echo "no checkpoint.part.* in $RESUME_FROM"; exit 2; }
  mkdir -p "$folder"
  cat "$RESUME_FROM"/checkpoint.part.* > "$folder/checkpoint.pt"
  "$PYTHON" - "$RESUME_FROM/unit.json" "$folder/checkpoint.pt" <<'PY'
import json, sys
from btkd.weights import file_sha256

want = json.load(open(sys.argv[1]))["windows"][-1].get("checkpoint_sha256")
if want and file_sha256(sys.argv[2]) != want:
    sys.exit("the checkpoint put together from its parts differs from the one the last window paused with: "
             "a part is missing or damaged; stage the returned folder again")
PY
  tar -xf "$RESUME_FROM/record.tar" -C "$folder"
  RUN=($cmd --resume "$folder" data.root="$STAGE")
else
  if [ "$kind" = bench ]; then
    # The split decides on the teacher's argmax: keep it on IEEE fp32 logits unless the teacher's
    # precision check found that a bf16 forward changes no decision; a published teacher without a
    # check is checked first (a minute), and the check comes back with the bench (later overrides win).
    choice=$("$PYTHON" "$REPO/benchmarks/cifar100/teacher_precision.py" "$config" "$@")
    if [ "${choice%% *}" = inspect ]; then
      teacher=${choice#inspect }
      mkdir -p "$RUNS/check"  # beside the bench folder, which the bench makes itself
      inspect "weights:$teacher" "$teacher" "$RUNS/check"
      choice=$("$PYTHON" "$REPO/benchmarks/cifar100/teacher_precision.py" "$config" \
        --check "$RUNS/check/inspect_teacher.json" "$@")
    fi
    set -- "runtime.teacher_precision=$choice" "$@"
  fi
  # name= pins the folder, whatever the overrides (a derived run name would move it)
  RUN=($cmd $config data.root="$STAGE" output_dir="$RUNS" name="$(basename "$folder")")
fi
# attempt [key=value ...]: train within what is left of BUDGET; the output is also kept, for a failure
attempt() {
  USED_LIMIT=$(limit)
  $BTKD "${RUN[@]}" runtime.time_limit="$USED_LIMIT" "$@" 2>&1 | tee "$RUNS/attempt.log"
}
checkpoint_state() { if [ -f "$folder/checkpoint.pt" ]; then sha256sum < "$folder/checkpoint.pt"; else echo none; fi; }
before=$(checkpoint_state)
# The GPU preflight (benchmarks/gpu_preflight.py, seconds): a step replayed from the CUDA graph must
# train as the eager step does. A graph that computes something else need not crash, so the fallback
# below would not see it: when the check fails, this window trains without the fast path (compile and
# graph off) from the start, and fast_path_failure.txt returns the check's output. PREFLIGHT: auto
# (default: on a CUDA machine), on, off.
PREFLIGHT=${PREFLIGHT:-auto}
if [ "$PREFLIGHT" = auto ]; then
  PREFLIGHT=$("$PYTHON" -c 'import torch; print("on" if torch.cuda.is_available() else "off")')
fi
FALLBACK_USED="" PREFLIGHT_FAILED=""
if [ "$PREFLIGHT" = on ]; then
  if (cd "$REPO" && timeout 120 "$PYTHON" benchmarks/gpu_preflight.py) > "$RUNS/preflight.log" 2>&1; then
    tail -n 1 "$RUNS/preflight.log"
  else
    { echo "== benchmarks/gpu_preflight.py failed: this window trains without the fast path; its output:"
      cat "$RUNS/preflight.log"; } >> "$OUT/fast_path_failure.txt"
    echo "the GPU preflight failed ($(tail -n 1 "$RUNS/preflight.log")): training without compile and the CUDA graph"
    PREFLIGHT_FAILED=1 FALLBACK_USED="preflight: runtime.compile=off runtime.cuda_graph=off"
  fi
fi
if [ -n "$PREFLIGHT_FAILED" ]; then
  attempt "$@" runtime.compile=off runtime.cuda_graph=off || failed=$?
else
  attempt "$@" || failed=$?
fi
# The GPU's fast path (torch.compile, then the CUDA graph) is the code a CPU rehearsal cannot run. If
# it fails before this window's first epoch end (the checkpoint unchanged), the window is not lost:
# train again without compile, then also without the graph, the same computation run eagerly (one
# process, bf16 autocast as before). The run's config.yaml and meta.json keep the path it took (a
# later window resumes on it), unit.json the fallback, fast_path_failure.txt each failed attempt's
# output. FALLBACK=off shows a failure as it is; auto (default) falls back on a CUDA machine only.
FALLBACK=${FALLBACK:-auto}
for fallback in "runtime.compile=off" "runtime.compile=off runtime.cuda_graph=off"; do
  [ -z "$PREFLIGHT_FAILED" ] || break  # the fast path is off already
  [ "${failed:-0}" != 0 ] && [ "$(checkpoint_state)" = "$before" ] || break
  if [ "$FALLBACK" = auto ]; then
    FALLBACK=$("$PYTHON" -c 'import torch; print("on" if torch.cuda.is_available() else "off")')
  fi
  [ "$FALLBACK" = on ] || break
  if [ $((BUDGET - (SECONDS - STARTED))) -lt 150 ]; then echo "no time left in BUDGET to train again"; break; fi
  { echo "== btkd ${RUN[*]} $* ${FALLBACK_USED}: exit $failed, before its first epoch end; its last 300 lines:"
    tail -n 300 "$RUNS/attempt.log"; } >> "$OUT/fast_path_failure.txt"
  echo "btkd $cmd failed (exit $failed) before its first epoch end: training again with $fallback"
  FALLBACK_USED=$fallback failed=0
  attempt "$@" $fallback || failed=$?
done
export FALLBACK_USED
# record.tar: the run's small files present in its folder (a teacher's or a bench's)
pack_record() {
  local present=() f
  for f in config.yaml meta.json log.jsonl summary.json bench.yaml results.json results.md \
           inspect_teacher.json inspect_teacher.md; do
    if [ -f "$folder/$f" ]; then present+=("$f"); fi
  done
  if [ -d "$folder/runs" ]; then  # a bench's members
    present+=($(cd "$folder" && find runs -name config.yaml -o -name meta.json -o -name log.jsonl -o -name summary.json))
  fi
  if [ ${#present[@]} -gt 0 ]; then tar -cf "$OUT/record.tar" -C "$folder" "${present[@]}"; fi
}
# what comes back, listed; at most 8 files, or the device drops some
returned() {
  ls -la "$OUT"
  if [ "$(ls "$OUT" | wc -l)" -gt 8 ]; then
    echo "ERROR: $(ls "$OUT" | wc -l) files to return, over the 8 a window returns: the device drops some, and"
    echo "this unit's progress cannot come back. Give a unit fewer members (bench.seeds=[0]; bench.only=[...])."
    exit 3
  fi
}
if [ "${failed:-0}" != 0 ]; then
  # A crash loses no more than the epoch it hit: return the last checkpoint (written at every epoch
  # end) and the record as a paused unit would, and say so.
  echo "btkd $cmd failed (exit $failed); returning what it left"
  checkpoint=""
  if [ -f "$folder/checkpoint.pt" ]; then
    checkpoint=$folder/checkpoint.pt
    split -b 15M -d "$checkpoint" "$OUT/checkpoint.part."
  fi
  pack_record
  record failed "$checkpoint"
  returned
  exit "$failed"
fi
# Finished: a teacher's summary.json, a bench whose results say complete.
if [ "$kind" = teacher ]; then
  finished=$([ -f "$folder/summary.json" ] && echo yes || echo no)
  if [ "$finished" = yes ]; then
    # the weights as they will be published and distilled from: half precision (in shards when large)
    published=$("$PYTHON" -c "import sys; from btkd.weights import save_half, read_weights; \
print(*save_half(read_weights(sys.argv[1]), sys.argv[2], sys.argv[3]))" \
      "$folder/last.safetensors" "$folder" "teacher_$name")
    cp $published "$OUT/"
    # the precision check on those very weights (the run's config beside them names model and data)
    inspect "${published%% *}" "$name" "$folder" "$@"
  fi
else
  finished=$("$PYTHON" -c "import json,sys; print('yes' if json.load(open(sys.argv[1]))['complete'] else 'no')" \
    "$folder/results.json")
  cp "$RUNS"/check/inspect_teacher.* "$folder/" 2>/dev/null || true  # a check run before this bench
fi
pack_record
if [ "$finished" = yes ]; then
  record finished
  echo "unit finished"
  # Time to spare on a GPU, never past BUDGET: first what keeping BTKD's split on fp32 logits costs a
  # one-seed bench unit (benchmarks/gpu_bench.py: CE, KD, DKD, each +/- BTKD, with a bf16, an fp32
  # and a TF32 teacher forward, side by side; it sizes every later bench window), then the paths no
  # window has run yet (benchmarks/gpu_smoke.sh).
  if [ "${SMOKE:-1}" = 1 ] && [ "$("$PYTHON" -c 'import torch; print(torch.cuda.is_available())')" = True ]; then
    left=$((BUDGET - 30 - (SECONDS - STARTED)))
    measured=$("$PYTHON" -c "import json,sys; g=json.load(open(sys.argv[1]))['grids']; \
print(all(f'5/{q}' in g for q in ('same', 'fp32', 'tf32')))" "$REPO/benchmarks/results/gpu_bench_teacher_precision.json" \
      2>/dev/null || echo False)  # measured once is enough: the time then goes to the smoke checks
    if [ "$left" -ge 150 ] && [ "$measured" != True ]; then
      (cd "$REPO" && timeout "$left" "$PYTHON" benchmarks/gpu_bench.py --grids 5 --teacher-precision same,fp32,tf32 \
        --epochs 3 --out "$OUT" > "$OUT/gpu_bench.txt" 2>&1) && rm "$OUT/gpu_bench.txt" \
        || echo "gpu_bench.py failed or ran out of time: its output is in gpu_bench.txt"
    fi
    left=$((BUDGET - 30 - (SECONDS - STARTED)))
    if [ "$left" -ge 120 ]; then
      (cd "$REPO" && OUT=$OUT PYTHON=$PYTHON timeout "$left" bash benchmarks/gpu_smoke.sh cuda) || true
    fi
  fi
else
  split -b 15M -d "$folder/checkpoint.pt" "$OUT/checkpoint.part."
  record paused "$folder/checkpoint.pt"
  echo "unit paused: its checkpoint is in $OUT/checkpoint.part.*; continue it with RESUME_FROM"
fi
returned
