#!/usr/bin/env bash
# CIFAR-100 on a CPU, for evidence while no GPU is at hand: train a small teacher, inspect its bias,
# then bench an mlp student against it (5 seeds, 20 epochs): alone, KD and DKD (each with and without
# BTKD) and the five BTKD ablations. Two teachers, one setting each:
#   convnet  convnet of width 16, 30 epochs; then a diagnostic bench with the BTKD authors' weights
#   resnet8  resnet8, 40 epochs; the same bench plus the authors' weights pair, in one pass (mlp); then
#            convnet students of width 8 (convnet8) and 16 (convnet16): alone, KD and KD+BTKD, 3 seeds;
#            then seeds 3-5 of the width-16 bench (convnet16_more_seeds), pooled with it into one 6-seed
#            table (convnet16_6seeds); then the width-16 bench's seeds 0-2 on a 40-epoch schedule
#            (convnet16_long)
# Small models and short runs: it asks whether BTKD helps where distillation itself pays, not what the
# field's benchmark would give.
# Results (JSON, Markdown, plots, every member's per-epoch log, the teacher's weights and log) land
# in benchmarks/results/cifar100_cpu/ (convnet) or benchmarks/results/cifar100_cpu_resnet8/. Every
# step continues from its checkpoint when run again.
#
#   bash benchmarks/cifar100_cpu_bench.sh [convnet|resnet8] [BENCH...]   # from the repo root, with btkd installed (make venv)
#
# BENCH names the benches to run (convnet: bench, authors_weights; resnet8: mlp, convnet8, convnet16,
# convnet16_more_seeds, convnet16_long);
# all of the setting's unless told. A teacher already committed in the results folder (teacher_run/) is
# used as it is, not trained again.
#
# Needs CIFAR-100 (the dataset's folder; see data.root in docs/CONFIG.md).
set -euo pipefail
SETTING=${1:-convnet}
case $SETTING in
  convnet) DEFAULT_OUT=benchmarks/results/cifar100_cpu; ALL="bench authors_weights" ;;
  resnet8) DEFAULT_OUT=benchmarks/results/cifar100_cpu_resnet8; ALL="mlp convnet8 convnet16 convnet16_more_seeds convnet16_long" ;;
  *) echo "unknown setting '$SETTING': give convnet or resnet8" >&2; exit 2 ;;
esac
shift $(( $# > 0 ? 1 : 0 ))
BENCHES=${*:-$ALL}
for b in $BENCHES; do
  case " $ALL " in *" $b "*) ;; *) echo "unknown bench '$b' for $SETTING: give some of: $ALL" >&2; exit 2 ;; esac
done
RUNS=${RUNS:-runs/cifar100_cpu_evidence}
OUT=${OUT:-$DEFAULT_OUT}
TEACHER_RUN=$RUNS/teacher_c100cpu_$SETTING
TEACHER=$TEACHER_RUN/last.safetensors
CONFIGS=cifar100/cpu/bench
PREFIX=bench_c100cpu_
# shellcheck source=benchmarks/keep_bench.sh
source "$(dirname "$0")/keep_bench.sh"
mkdir -p "$OUT"

if [ ! -f "$TEACHER_RUN/summary.json" ] && [ -f "$OUT/teacher_run/summary.json" ]; then
  mkdir -p "$TEACHER_RUN" && cp "$OUT/teacher_run"/* "$TEACHER_RUN/"  # the committed teacher, as it is
fi
if [ ! -f "$TEACHER_RUN/summary.json" ]; then
  if [ -f "$TEACHER_RUN/checkpoint.pt" ]; then "$BTKD" train --resume "$TEACHER_RUN"
  else "$BTKD" train "cifar100/cpu/teachers/$SETTING" output_dir="$RUNS" runtime.progress=false; fi
fi
"$BTKD" inspect-teacher "cifar100/cpu/bench/${SETTING}_mlp" model.teacher_checkpoint="$TEACHER" --out "$OUT/teacher"

wanted() { case " $BENCHES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
if [ "$SETTING" = convnet ]; then
  if wanted bench; then bench convnet_mlp bench; fi
  if wanted authors_weights; then bench convnet_mlp_authors_weights authors_weights; fi
else
  if wanted mlp; then bench resnet8_mlp bench; fi
  if wanted convnet8; then bench resnet8_convnet8 convnet8; fi
  if wanted convnet16; then bench resnet8_convnet16 convnet16; fi
  if wanted convnet16_more_seeds; then
    bench resnet8_convnet16_more_seeds convnet16_more_seeds
    # both units of the width-16 bench (seeds 0-2 and 3-5) in one 6-seed table, the reading PLAN.md set
    "$BTKD" report "$OUT/convnet16" "$OUT/convnet16_more_seeds" --out "$OUT/convnet16_6seeds"
    "$PYTHON" "$(dirname "$0")/evidence_summary.py" --out benchmarks/results/evidence_summary.md
  fi
  if wanted convnet16_long; then bench resnet8_convnet16_long convnet16_long; fi
fi

# The teacher's run folder with its (small) last-epoch weights; no checkpoints.
mkdir -p "$OUT/teacher_run.new"
cp "$TEACHER_RUN"/{config.yaml,meta.json,log.jsonl,summary.json,last.safetensors} "$OUT/teacher_run.new/"
rm -rf "$OUT/teacher_run" && mv "$OUT/teacher_run.new" "$OUT/teacher_run"
