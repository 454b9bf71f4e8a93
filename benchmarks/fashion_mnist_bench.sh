#!/usr/bin/env bash
# The CPU evidence for BTKD: on Fashion-MNIST, train the teacher, inspect its bias, then one bench of
# the student alone, KD and DKD (each with and without BTKD) and the five BTKD ablations over 5 seeds,
# then a diagnostic pair with the BTKD authors' loss weights.
# Results (JSON, Markdown, plots, every member's per-epoch log) land in benchmarks/results/fashion_mnist/.
#
#   bash benchmarks/fashion_mnist_bench.sh            # from the repo root, with btkd installed (make venv)
#
# Needs Debian's dataset-fashion-mnist (or the IDX files under $BTKD_DATA/fashion_mnist).
set -euo pipefail
BTKD=${BTKD:-.venv/bin/btkd}
RUNS=${RUNS:-runs/fashion_mnist_evidence}
OUT=${OUT:-benchmarks/results/fashion_mnist}
TEACHER=$RUNS/teacher_fmnist_convnet
BENCH=$RUNS/bench_fmnist_convnet_mlp

start=$(date +%s)
fresh=$([ -f "$TEACHER/summary.json" ] || [ -d "$BENCH" ] && echo no || echo yes)  # time only a whole run
if [ ! -f "$TEACHER/summary.json" ]; then
  if [ -f "$TEACHER/checkpoint.pt" ]; then "$BTKD" train --resume "$TEACHER"
  else "$BTKD" train fashion_mnist/teachers/convnet output_dir="$RUNS" runtime.progress=false; fi
fi
"$BTKD" inspect-teacher fashion_mnist/bench/convnet_mlp model.teacher_checkpoint="$TEACHER/last.safetensors" \
  --out "$OUT/teacher"
bench() {  # bench NAME: run (or continue) fashion_mnist/bench/NAME against the teacher
  local folder=$RUNS/bench_fmnist_$1
  if [ -f "$folder/checkpoint.pt" ]; then "$BTKD" bench --resume "$folder"
  else "$BTKD" bench "fashion_mnist/bench/$1" output_dir="$RUNS" \
         model.teacher_checkpoint="$TEACHER/last.safetensors" runtime.progress=false; fi
}
bench convnet_mlp
end=$(date +%s)
# A diagnostic pair (KD and KD+BTKD with the authors' CE 0.5 / KD 0.5), not counted in the time above.
bench convnet_mlp_authors_weights

# Keep what the tables are made of: the bench's report and every member's config, meta, log and
# summary; the teacher's run folder with its (small) last-epoch weights. No checkpoints.
keep() {  # keep FOLDER AS
  rm -rf "$OUT/$2" && mkdir -p "$OUT/$2"
  cp "$1"/{bench.yaml,results.json,results.md,*.png} "$OUT/$2/"
  (cd "$1" && find runs -name '*.json' -o -name '*.jsonl' -o -name 'config.yaml') | while read -r f; do
    mkdir -p "$OUT/$2/$(dirname "$f")" && cp "$1/$f" "$OUT/$2/$f"; done
}
keep "$BENCH" bench
keep "$RUNS/bench_fmnist_convnet_mlp_authors_weights" authors_weights
rm -rf "$OUT/teacher_run" && mkdir -p "$OUT/teacher_run"
cp "$TEACHER"/{config.yaml,meta.json,log.jsonl,summary.json,last.safetensors} "$OUT/teacher_run/"
if [ "$fresh" = yes ]; then
  echo "wall time of the teacher, its inspection and the main bench: $(( (end - start) / 60 )) min" \
       "$(( (end - start) % 60 )) s on $(nproc) CPU cores" | tee "$OUT/wall_time.txt"
fi
