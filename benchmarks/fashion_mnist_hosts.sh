#!/usr/bin/env bash
# BTKD on every other host (KD+LS, DKD+LS, NKD, DIST, CTKD, MLKD on two views), each with and without
# BTKD, and the rivals (label-swap KD, SLD, RLD), on Fashion-MNIST: convnet -> mlp, 5 seeds, 20 epochs,
# distilled from the committed teacher of benchmarks/fashion_mnist_bench.sh (KD and DKD are in that
# bench, on the same seeds and batches). Then two diagnostics: MLKD's levels (MLKD collapses here) and
# DIST+BTKD's batch-level options. Results land in benchmarks/results/fashion_mnist/{hosts,mlkd_levels,
# dist_terms}/.
#
#   bash benchmarks/fashion_mnist_hosts.sh            # from the repo root, with btkd installed (make venv)
set -euo pipefail
# shellcheck source=benchmarks/keep_bench.sh
source "$(dirname "$0")/keep_bench.sh"
bench convnet_mlp_hosts hosts
bench convnet_mlp_mlkd_levels mlkd_levels
bench convnet_mlp_dist_terms dist_terms
