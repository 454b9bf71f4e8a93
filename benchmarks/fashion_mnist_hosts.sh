#!/usr/bin/env bash
# BTKD on every other host (KD+LS, DKD+LS, NKD, DIST, CTKD, MLKD on two views), each with and without
# BTKD, and the rivals (label-swap KD, SLD, RLD), on Fashion-MNIST: convnet -> mlp, 5 seeds, 20 epochs,
# distilled from the committed teacher of benchmarks/fashion_mnist_bench.sh (KD and DKD are in that
# bench, on the same seeds and batches). Results land in benchmarks/results/fashion_mnist/hosts/.
#
#   bash benchmarks/fashion_mnist_hosts.sh            # from the repo root, with btkd installed (make venv)
set -euo pipefail
BTKD=${BTKD:-.venv/bin/btkd}
RUNS=${RUNS:-runs/fashion_mnist_evidence}
OUT=${OUT:-benchmarks/results/fashion_mnist}
TEACHER=${TEACHER:-$OUT/teacher_run/last.safetensors}
FOLDER=$RUNS/bench_fmnist_convnet_mlp_hosts

start=$(date +%s)
fresh=$([ -d "$FOLDER" ] && echo no || echo yes)
if [ -f "$FOLDER/checkpoint.pt" ]; then "$BTKD" bench --resume "$FOLDER"
else "$BTKD" bench fashion_mnist/bench/convnet_mlp_hosts output_dir="$RUNS" model.teacher_checkpoint="$TEACHER" \
       runtime.progress=false; fi
end=$(date +%s)

rm -rf "$OUT/hosts" && mkdir -p "$OUT/hosts"
cp "$FOLDER"/{bench.yaml,results.json,results.md,*.png} "$OUT/hosts/"
(cd "$FOLDER" && find runs -name '*.json' -o -name '*.jsonl' -o -name 'config.yaml') | while read -r f; do
  mkdir -p "$OUT/hosts/$(dirname "$f")" && cp "$FOLDER/$f" "$OUT/hosts/$f"; done
if [ "$fresh" = yes ]; then
  echo "wall time of the hosts bench: $(( (end - start) / 60 )) min $(( (end - start) % 60 )) s on $(nproc) CPU cores" \
    | tee "$OUT/hosts/wall_time.txt"
fi
