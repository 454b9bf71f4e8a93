#!/usr/bin/env bash
# The GPU paths no window has run yet, on synthetic data, in a few minutes: for the time a unit
# leaves over (unit.sh calls it when a unit finishes with time to spare; it runs alone too).
#
#   OUT=folder bash benchmarks/gpu_smoke.sh [DEVICE]     # DEVICE: cuda (default), or cpu to try it here
#
# 1. tests/test_randaugment.py: RandAugment + Cutout, CUDA against the CPU (pixel for pixel).
# 2. benchmarks/gpu_preflight.py --compile (CUDA only): the CUDA-graph step with compiled models and
#    losses trains as the eager step (unit.sh runs it without compile before every window).
# 3. benchmarks/strong_view.py: the strong view's loader cost beside the weak one's, on DEVICE.
# 4. A teacher, then students on two views (MLKD+BTKD) and one view (KD+BTKD) with the teacher's
#    forward in fp32 and in TF32, on the fast path (CUDA graph, compile): they must train.
# Writes $OUT/gpu_smoke.txt (every step's output, and a line per step: ok or FAILED) and
# $OUT/strong_view_gpu.json. Each step runs on its own; one failing does not stop the others.
set -uo pipefail
: "${OUT:?set OUT to the folder whose files come back}"
DEVICE=${1:-cuda}
PYTHON=${PYTHON:-python3}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$OUT"
log=$OUT/gpu_smoke.txt
: > "$log"
scratch=smoke_runs  # relative: the runs' records name no machine path
rm -rf "$scratch"
trap 'rm -rf "$scratch"' EXIT
step() {  # step NAME COMMAND...: run it, log its output and verdict
  local name=$1 start=$SECONDS
  shift
  echo "== $name: $*" >> "$log"
  if "$@" >> "$log" 2>&1; then echo "== $name: ok ($((SECONDS - start)) s)" | tee -a "$log"
  else echo "== $name: FAILED ($((SECONDS - start)) s)" | tee -a "$log"; fi
}
SIZE=4096
[ "$DEVICE" = cuda ] || SIZE=512  # resnet56 trains a few images/s on a CPU: 4096 x 3 epochs is over half an hour
DATA=(data.name=synthetic "data.options={size: $SIZE, num_classes: 100, image_size: 32, prototypes: true}" data.batch_size=64
      runtime.device="$DEVICE" runtime.progress=false output_dir="$scratch")
step randaugment_tests "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_randaugment.py
[ "$DEVICE" != cuda ] || step preflight_compiled "$PYTHON" benchmarks/gpu_preflight.py --compile
mkdir -p "$scratch"
view_json=benchmarks/results/strong_view_gpu.json  # the path it is committed under (its JSON names it)
[ "$DEVICE" = cuda ] || view_json=$scratch/strong_view_gpu.json  # a try on the CPU commits nothing
step strong_view "$PYTHON" benchmarks/strong_view.py --device "$DEVICE" --out "$view_json"
cp "$view_json" "$OUT/" 2>/dev/null
step teacher "$PYTHON" -m btkd.cli train cifar100/teachers/resnet56 "${DATA[@]}" name=teacher optim.epochs=3 \
  "optim.milestones=[2]"
STUDENT=(model.student=resnet20 model.teacher=resnet56 model.teacher_checkpoint="$scratch/teacher/last.safetensors"
         optim.epochs=2 "optim.milestones=[1]")
step mlkd_btkd_two_views_fp32_teacher "$PYTHON" -m btkd.cli distill cifar100/mlkd_btkd/res56_res20 "${DATA[@]}" \
  "${STUDENT[@]}" runtime.teacher_precision=fp32 name=mlkd_btkd
step kd_btkd_tf32_teacher "$PYTHON" -m btkd.cli distill cifar100/kd_btkd/res56_res20 "${DATA[@]}" "${STUDENT[@]}" \
  runtime.teacher_precision=tf32 name=kd_btkd
for run in mlkd_btkd kd_btkd; do
  [ -f "$scratch/$run/meta.json" ] && "$PYTHON" - "$scratch/$run" >> "$log" 2>&1 <<'PY'
import json, sys
from pathlib import Path

run = Path(sys.argv[1])
meta = json.loads((run / "meta.json").read_text())
log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
keys = ("device", "precision", "teacher_precision", "teacher_bn_folded", "cuda_graph", "compile")
print(run.name, {k: meta.get(k) for k in keys}, "last test acc", log[-1]["test_acc"] if log else None)
PY
done
echo "log: $log"
