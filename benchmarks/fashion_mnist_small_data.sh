#!/usr/bin/env bash
# BTKD where distillation is known to pay: a student with little data (Hinton et al. 2015). The mlp
# student trains on 2,000 of the 20,000 Fashion-MNIST images its teacher (the committed convnet of
# benchmarks/fashion_mnist_bench.sh) was trained on, for 200 epochs (the optimizer steps of the main
# bench); the student alone, KD and DKD each with and without BTKD, and KD+BTKD with batch means;
# 5 seeds. Then the teacher's errors on those 2,000 images. Results land in
# benchmarks/results/fashion_mnist/small_data/.
#
#   bash benchmarks/fashion_mnist_small_data.sh     # from the repo root, with btkd installed (make venv)
set -euo pipefail
# shellcheck source=benchmarks/keep_bench.sh
source "$(dirname "$0")/keep_bench.sh"
bench convnet_mlp_small_data small_data
"$BTKD" inspect-teacher fashion_mnist/bench/convnet_mlp_small_data model.teacher_checkpoint="$TEACHER" \
  --out "$OUT/small_data/teacher"
