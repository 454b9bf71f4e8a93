#!/usr/bin/env bash
# CIFAR-100 on a CPU, for evidence while no GPU is at hand: train a small teacher (convnet, width 16,
# 30 epochs), inspect its bias, then one bench of an mlp student: alone, KD and DKD (each with and
# without BTKD) and the five BTKD ablations, 5 seeds, 20 epochs; then a diagnostic bench with the BTKD
# authors' loss weights. Small models and short runs: it asks whether BTKD helps where distillation
# itself pays, not what the field's benchmark would give.
# Results (JSON, Markdown, plots, every member's per-epoch log, the teacher's weights and log) land
# in benchmarks/results/cifar100_cpu/. Every step continues from its checkpoint when run again.
#
#   bash benchmarks/cifar100_cpu_bench.sh            # from the repo root, with btkd installed (make venv)
#
# Needs CIFAR-100 (the dataset's folder; see data.root in docs/CONFIG.md).
set -euo pipefail
BTKD=${BTKD:-.venv/bin/btkd}
RUNS=${RUNS:-runs/cifar100_cpu_evidence}
OUT=${OUT:-benchmarks/results/cifar100_cpu}
TEACHER=$RUNS/teacher_c100cpu_convnet
mkdir -p "$OUT"

if [ ! -f "$TEACHER/summary.json" ]; then
  if [ -f "$TEACHER/checkpoint.pt" ]; then "$BTKD" train --resume "$TEACHER"
  else "$BTKD" train cifar100/cpu/teachers/convnet output_dir="$RUNS" runtime.progress=false; fi
fi
"$BTKD" inspect-teacher cifar100/cpu/bench/convnet_mlp model.teacher_checkpoint="$TEACHER/last.safetensors" \
  --out "$OUT/teacher"

bench() {  # bench NAME AS: run (or continue) cifar100/cpu/bench/NAME, keep its results in $OUT/AS
  local folder=$RUNS/bench_c100cpu_$1 start end fresh
  start=$(date +%s)
  fresh=$([ -d "$folder" ] && echo no || echo yes)  # time only a bench run in one go
  if [ -f "$folder/checkpoint.pt" ]; then "$BTKD" bench --resume "$folder"
  else "$BTKD" bench "cifar100/cpu/bench/$1" output_dir="$RUNS" \
         model.teacher_checkpoint="$TEACHER/last.safetensors" runtime.progress=false; fi
  end=$(date +%s)
  # Keep what the tables are made of: the bench's report and every member's config, meta, log and
  # summary. No checkpoints.
  local wall=""  # a finished bench rerun keeps the wall time of the run that made it
  [ -f "$OUT/$2/wall_time.txt" ] && wall=$(cat "$OUT/$2/wall_time.txt")
  rm -rf "${OUT:?}/$2" && mkdir -p "$OUT/$2"
  [ -n "$wall" ] && echo "$wall" > "$OUT/$2/wall_time.txt"
  cp "$folder"/{bench.yaml,results.json,results.md,*.png} "$OUT/$2/"
  (cd "$folder" && find runs -name '*.json' -o -name '*.jsonl' -o -name 'config.yaml') | while read -r f; do
    mkdir -p "$OUT/$2/$(dirname "$f")" && cp "$folder/$f" "$OUT/$2/$f"; done
  if [ "$fresh" = yes ]; then
    echo "wall time of bench $1: $(( (end - start) / 60 )) min $(( (end - start) % 60 )) s on $(nproc) CPU cores" \
      | tee "$OUT/$2/wall_time.txt"
  fi
}
bench convnet_mlp bench
bench convnet_mlp_authors_weights authors_weights

# The teacher's run folder with its (small) last-epoch weights; no checkpoints.
rm -rf "$OUT/teacher_run" && mkdir -p "$OUT/teacher_run"
cp "$TEACHER"/{config.yaml,meta.json,log.jsonl,summary.json,last.safetensors} "$OUT/teacher_run/"
