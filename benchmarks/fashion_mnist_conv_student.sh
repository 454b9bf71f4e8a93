#!/usr/bin/env bash
# BTKD with a student of the teacher's own family, nearer it than the mlp: convnet (width 16)
# -> convnet (width 8) on Fashion-MNIST, the student alone, KD and DKD each with and without BTKD, and
# KD+BTKD with batch means; 3 seeds, 20 epochs, distilled from the committed teacher of
# benchmarks/fashion_mnist_bench.sh. Results land in benchmarks/results/fashion_mnist/conv_student/.
#
#   bash benchmarks/fashion_mnist_conv_student.sh     # from the repo root, with btkd installed (make venv)
set -euo pipefail
# shellcheck source=benchmarks/keep_bench.sh
source "$(dirname "$0")/keep_bench.sh"
bench convnet_convnet8 conv_student
