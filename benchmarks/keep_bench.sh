# Sourced by the CPU bench scripts: where things are (each may be set from outside; the defaults are
# Fashion-MNIST's), and bench NAME AS, which runs (or continues) $CONFIGS/NAME against the teacher and
# keeps its results (bench.yaml, results, plots, every member's config, meta, log and summary; no
# checkpoints) in $OUT/AS.
BTKD=${BTKD:-.venv/bin/btkd}
PYTHON=${PYTHON:-.venv/bin/python}
RUNS=${RUNS:-runs/fashion_mnist_evidence}
OUT=${OUT:-benchmarks/results/fashion_mnist}
TEACHER=${TEACHER:-$OUT/teacher_run/last.safetensors}
CONFIGS=${CONFIGS:-fashion_mnist/bench}  # the bench configs' folder
PREFIX=${PREFIX:-bench_fmnist_}          # their run folders' names: PREFIX + NAME

bench() {  # bench NAME AS: run (or continue) $CONFIGS/NAME, keep its results in $OUT/AS
  local folder=$RUNS/$PREFIX$1 start fresh
  start=$(date +%s)
  fresh=$([ -d "$folder" ] && echo no || echo yes)
  if [ -f "$folder/checkpoint.pt" ]; then "$BTKD" bench --resume "$folder"
  else "$BTKD" bench "$CONFIGS/$1" output_dir="$RUNS" model.teacher_checkpoint="$TEACHER" \
         runtime.progress=false; fi
  local end
  end=$(date +%s)
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
  # every committed CPU bench in one table, now with this one (benchmarks/results/evidence_summary.md)
  "$PYTHON" "$(dirname "${BASH_SOURCE[0]}")/evidence_summary.py" --out benchmarks/results/evidence_summary.md
}
